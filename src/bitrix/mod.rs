//! bitrix (in progress).
