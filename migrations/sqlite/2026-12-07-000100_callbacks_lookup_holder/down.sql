DROP INDEX callbacks_lookup_holder;
