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
        wait_for_outcome -> Bool,
        outcome_wait_minutes -> Integer,
        retry_no_answer_times -> Integer,
        retry_no_answer_minutes -> Integer,
        retry_escalate -> Bool,
        retry_client_times -> Integer,
        retry_client_minutes -> Integer,
        hours_enabled -> Bool,
        timezone -> Text,
        work_days -> Text,
        work_start_minute -> Integer,
        work_end_minute -> Integer,
        holidays -> Text,
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
        call_outcome -> Nullable<Text>,
        manager_extension -> Nullable<Text>,
        talk_seconds -> Nullable<Integer>,
        client_connected_at -> Nullable<Timestamp>,
        call_ended_at -> Nullable<Timestamp>,
        scheduled_for -> Nullable<Timestamp>,
        outcome_reported_at -> Nullable<Timestamp>,
        phone_lookup_by -> Nullable<Text>,
        phone_lookup_until -> Nullable<Timestamp>,
    }
}

diesel::table! {
    call_attempts (callback_id, n) {
        callback_id -> Text,
        n -> Integer,
        member_id -> Text,
        command_id -> Text,
        group_kind -> Text,
        group_extension -> Text,
        entry_id -> Nullable<Text>,
        placed_at -> Timestamp,
        outcome -> Nullable<Text>,
        manager_extension -> Nullable<Text>,
        client_connected_at -> Nullable<Timestamp>,
        talk_seconds -> Nullable<Integer>,
        disconnect_reason -> Nullable<Integer>,
        ended_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    mango_call_events (member_id, entry_id, kind, call_id, seq) {
        member_id -> Text,
        entry_id -> Text,
        kind -> Text,
        call_id -> Text,
        seq -> BigInt,
        command_id -> Nullable<Text>,
        body -> Text,
        received_at -> Timestamp,
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
        budget_waited -> Bool,
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
    mango_waits (bucket, holder) {
        bucket -> Text,
        holder -> Text,
        wake_us -> BigInt,
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
diesel::joinable!(call_attempts -> callbacks (callback_id));

diesel::allow_tables_to_appear_in_same_query!(callbacks, call_attempts, mango_call_events, portals);
