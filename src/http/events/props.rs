//! Properties of the event form: whatever arrives gives a form or a 400, and an event shaped
//! like Bitrix24's (`event`, `data[...]`, `auth[...]`) reads back with brackets written any way.

use actix_web::ResponseError;
use proptest::prelude::*;

use super::EventForm;
use crate::http::props::{brackets, config, encode, hostile_body, value};
use crate::http::request::parse_form;

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ONAPPUNINSTALL".to_owned()),
        Just("ONAPPUPDATE".to_owned()),
        Just("ONAPPINSTALL".to_owned()),
        Just("ONAPPTEST".to_owned()),
        Just("onappuninstall".to_owned()),
        value(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_body_gives_an_event_form_or_a_400(body in hostile_body()) {
        if let Err(e) = parse_form::<EventForm>(&body) {
            prop_assert_eq!(e.status_code().as_u16(), 400, "{}", e);
        }
    }

    #[test]
    fn an_event_reads_back_as_bitrix24_sent_it(
        event in event_name(),
        clean in prop::option::of(prop_oneof![Just("0".to_owned()), Just("1".to_owned()), value()]),
        version in prop::option::of(value()),
        member_id in "[0-9a-f]{32}",
        application_token in value(),
        access_token in prop::option::of(value()),
        style in brackets(),
    ) {
        let mut pairs = vec![
            ("event".to_owned(), event.clone()),
            ("event_handler_id".to_owned(), "7".to_owned()),
        ];
        if let Some(c) = &clean {
            pairs.push(("data[CLEAN]".into(), c.clone()));
        }
        if let Some(v) = &version {
            pairs.push(("data[VERSION]".into(), v.clone()));
        }
        pairs.push(("data[LANGUAGE_ID]".into(), "ru".into()));
        pairs.push(("ts".into(), "1767225600".into()));
        pairs.push(("auth[member_id]".into(), member_id.clone()));
        if let Some(a) = &access_token {
            pairs.push(("auth[access_token]".into(), a.clone()));
        }
        pairs.push(("auth[application_token]".into(), application_token.clone()));
        let body = encode(&pairs, style);
        let form: EventForm = parse_form(body.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
        prop_assert_eq!(form.event, Some(event));
        prop_assert_eq!(form.data.clean, clean);
        prop_assert_eq!(form.data.version, version);
        let auth = form.auth.unwrap_or_default();
        prop_assert_eq!(auth.member_id, Some(member_id));
        prop_assert_eq!(auth.application_token, Some(application_token));
        prop_assert_eq!(auth.access_token, access_token);
    }
}
