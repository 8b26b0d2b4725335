DROP TABLE rate_slots;
DROP TABLE jobs;
DROP TABLE callbacks;
DROP TABLE deals;
DROP TABLE portal_settings;
DROP TABLE portals;
