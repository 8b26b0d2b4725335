//! Human-readable Mango result codes, for logs, the deal timeline and the settings UI.
//!
//! Mango's codes are hierarchical and its documentation asks integrators to read an unknown
//! code as its nearest known subclass or class ("если внешняя система не распознает код…
//! интерпретировать его как код известного класса/подкласса"), so [`describe_code`] walks
//! 2219 → 2210 → 2200 → the 2xxx class instead of giving up.

/// `(Russian, English)` description of a Mango result code.
///
/// Lookup order: the exact code, then the code with its last digit zeroed, then with its last two
/// digits zeroed, then the class (first digit). 1000 ("OK") is matched only exactly: an unknown
/// 10xx code must not read as success.
pub fn describe_code(code: u32) -> (&'static str, &'static str) {
    if let Some(text) = exact(code) {
        return text;
    }
    for candidate in [code / 10 * 10, code / 100 * 100] {
        if candidate != code && candidate != 1000 {
            if let Some(text) = exact(candidate) {
                return text;
            }
        }
    }
    class(code)
}

/// The codes Mango's VPBX API documentation lists, with its own Russian wording.
fn exact(code: u32) -> Option<(&'static str, &'static str)> {
    let text = match code {
        1000 => ("Действие успешно выполнено", "OK"),
        1100 => ("Вызов завершён в нормальном режиме", "Call ended normally"),
        1110 => ("Вызов завершён вызывающим абонентом", "The caller hung up"),
        1111 => (
            "Вызов не получил ответа в течение времени ожидания",
            "No answer within the timeout",
        ),
        1120 => ("Вызов завершён вызываемым абонентом", "The callee hung up"),
        1121 => ("Абонент занят", "Busy"),
        1122 => (
            "Вызов отклонён вызываемым абонентом",
            "Rejected by the callee",
        ),
        1124 => (
            "Абонент в статусе «Не беспокоить» контакт-центра",
            "The callee is in contact-centre do-not-disturb",
        ),
        1131 => ("Номер недоступен", "Number unavailable"),
        1133 => ("Номер не существует", "Number does not exist"),
        1160 => ("Вызов на группу не удался", "Group call failed"),
        1164 => (
            "Все операторы группы недоступны",
            "All operators of the group are unavailable",
        ),
        1170 => (
            "Вызов завершён схемой переадресации",
            "Ended by the forwarding scheme",
        ),
        1181 => (
            "Вызов завершён командой внешней системы",
            "Ended by an external-system command",
        ),
        1190..=1192 => (
            "Абонент неактивен или вне расписания",
            "Inactive or outside the schedule",
        ),
        2110 => ("Лицевой счёт заблокирован", "Account blocked"),
        2220 => (
            "Превышен лимит одновременных вызовов",
            "Concurrent call limit reached",
        ),
        2240 => ("Недостаточно средств на счёте", "Insufficient funds"),
        2300 => ("Направление заблокировано", "Direction blocked"),
        3100 => ("Неверные параметры запроса", "Bad request parameters"),
        3101 => ("Запрос выполнен не методом POST", "Request is not a POST"),
        3102 => (
            "Подпись запроса не совпадает (проверьте ключ и соль)",
            "Signature mismatch (check the key and salt)",
        ),
        3103 => (
            "Отсутствует обязательный параметр",
            "Missing required parameter",
        ),
        3104 => ("Неверный формат параметра", "Bad parameter format"),
        3105 => (
            "Неверный ключ API (vpbx_api_key)",
            "Bad API key (vpbx_api_key)",
        ),
        3111 => ("Неверный период дат", "Bad date range"),
        3124 => (
            "Линия не может использоваться для исходящих вызовов",
            "Line not allowed for outgoing calls",
        ),
        3136 => ("Неверный формат номера", "Bad number format"),
        3200 => ("Неверный номер абонента", "Bad subscriber number"),
        3300 => ("Объект не найден", "Object not found"),
        3330 => ("Номер не найден", "Number not found"),
        3400 => ("Неверный JSON", "Bad JSON"),
        4001 => ("Команда не поддерживается", "Unsupported command"),
        4101 => ("Вызов завершён или не существует", "Call ended or missing"),
        4290 => (
            "Превышен лимит запросов (HTTP 429)",
            "Rate limit exceeded (HTTP 429)",
        ),
        4501 => (
            "Превышен лимит частоты вызовов",
            "Call frequency limit reached",
        ),
        5000 => ("Ошибка сервера Mango", "Mango server error"),
        5001..=5004 => (
            "Сервер Mango перегружен или недоступна база данных",
            "Mango server overloaded or database problem",
        ),
        5008 => ("Сервис недоступен", "Service unavailable"),
        5011 => ("Таймаут на стороне Mango", "Timeout on Mango's side"),
        5200 => (
            "Не подключена услуга групп (ALLOW_GROUPS)",
            "Groups service not enabled (ALLOW_GROUPS)",
        ),
        _ => return None,
    };
    Some(text)
}

fn class(code: u32) -> (&'static str, &'static str) {
    match code {
        1000..=1999 => ("Вызов завершён (код 1xxx)", "Call completed (1xxx class)"),
        2000..=2999 => (
            "Ограничение биллинга (код 2xxx)",
            "Forbidden by billing (2xxx class)",
        ),
        3000..=3999 => ("Неверный запрос (код 3xxx)", "Bad request (3xxx class)"),
        4000..=4999 => (
            "Действие невозможно (код 4xxx)",
            "Action not possible (4xxx class)",
        ),
        5000..=5999 => (
            "Ошибка сервера Mango (код 5xxx)",
            "Mango server error (5xxx class)",
        ),
        _ => ("Неизвестный код Mango", "Unknown Mango code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_documented_code_is_described_exactly() {
        assert_eq!(
            describe_code(3102).1,
            "Signature mismatch (check the key and salt)"
        );
        assert_eq!(describe_code(1000).1, "OK");
        assert_eq!(
            describe_code(5003).1,
            "Mango server overloaded or database problem"
        );
    }

    #[test]
    fn an_unknown_code_reads_as_its_subclass_then_its_class() {
        // 3107 → 3100 (last digit zeroed).
        assert_eq!(describe_code(3107), describe_code(3100));
        // 1139 → 1130 (unknown) → 1100.
        assert_eq!(describe_code(1139), describe_code(1100));
        // 2219 → 2210 and 2200 are undocumented → the billing class.
        assert_eq!(describe_code(2219).1, "Forbidden by billing (2xxx class)");
        assert_eq!(describe_code(4999).1, "Action not possible (4xxx class)");
    }

    #[test]
    fn an_unknown_10xx_code_never_reads_as_ok() {
        assert_eq!(describe_code(1001).1, "Call completed (1xxx class)");
        assert_eq!(describe_code(1099).1, "Call completed (1xxx class)");
    }

    #[test]
    fn a_code_outside_every_class_is_unknown() {
        assert_eq!(describe_code(0).1, "Unknown Mango code");
        assert_eq!(describe_code(42).1, "Unknown Mango code");
        assert_eq!(describe_code(99_999).1, "Unknown Mango code");
    }
}
