//! The one diesel schema shared by SQLite and PostgreSQL: portable SQL types only.

diesel::table! {
    portals (member_id) {
        member_id -> Text,
        domain -> Text,
        client_endpoint -> Text,
        server_endpoint -> Text,
        access_token -> Nullable<Text>,
        refresh_token -> Nullable<Text>,
        application_token -> Nullable<Text>,
        expires_at -> Nullable<Timestamp>,
        scope -> Text,
        status -> Text,
        lang -> Text,
        installed -> Bool,
        needs_reauth -> Bool,
        uninstalled_at -> Nullable<Timestamp>,
        token_version -> BigInt,
        refresh_lock_until -> Nullable<Timestamp>,
        refresh_lock_by -> Nullable<Text>,
        refreshed_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        app_check_sent_at -> Nullable<Timestamp>,
        app_reached_at -> Nullable<Timestamp>,
        app_token_received_at -> Nullable<Timestamp>,
        refresh_problem -> Nullable<Text>,
    }
}

diesel::table! {
    portal_settings (member_id) {
        member_id -> Text,
        mango_api_key -> Nullable<Text>,
        mango_api_salt -> Nullable<Text>,
        line_number -> Text,
        trainee_extension -> Text,
        experienced_extension -> Text,
        duplicate_window_minutes -> Integer,
        contact_wait_seconds -> Integer,
        mango_last_error -> Nullable<Text>,
        mango_checked_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    deals (member_id, deal_id) {
        member_id -> Text,
        deal_id -> Text,
        runs -> Integer,
        active_callback_id -> Nullable<Text>,
        last_started_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    callbacks (id) {
        id -> Text,
        member_id -> Text,
        deal_id -> Text,
        event_token -> Nullable<Text>,
        workflow_id -> Nullable<Text>,
        requested_group -> Text,
        group_kind -> Nullable<Text>,
        group_extension -> Nullable<Text>,
        phone_override -> Nullable<Text>,
        phone -> Nullable<Text>,
        status -> Text,
        command_id -> Nullable<Text>,
        mango_code -> Nullable<Integer>,
        error -> Nullable<Text>,
        outcome -> Nullable<Text>,
        attempts -> Integer,
        contact_checks -> Integer,
        event_sent_at -> Nullable<Timestamp>,
        comment_added_at -> Nullable<Timestamp>,
        started_at -> Nullable<Timestamp>,
        finished_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    jobs (id) {
        id -> Text,
        member_id -> Nullable<Text>,
        kind -> Text,
        payload -> Text,
        dedup_key -> Nullable<Text>,
        status -> Text,
        attempts -> Integer,
        max_attempts -> Integer,
        run_at -> Timestamp,
        locked_by -> Nullable<Text>,
        locked_until -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    rate_slots (bucket, slot) {
        bucket -> Text,
        slot -> BigInt,
        used -> Integer,
    }
}

diesel::table! {
    rest_budgets (member_id) {
        member_id -> Text,
        tat_us -> BigInt,
    }
}

diesel::joinable!(portal_settings -> portals (member_id));
diesel::joinable!(callbacks -> portals (member_id));
diesel::joinable!(jobs -> portals (member_id));
