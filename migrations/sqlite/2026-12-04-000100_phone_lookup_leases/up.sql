-- Phone lookups batched across callbacks (#12): a job that looks up its deal's phone also takes
-- the portal's other queued callbacks still without a phone, and looks them all up in two
-- `batch` requests. While it does, those callbacks carry its lease, so no other job adopts them
-- and their own jobs wait for the phones instead of asking Bitrix24 themselves.
--   phone_lookup_by NOT NULL: the adopting run; its lease ends at phone_lookup_until (a crashed
--     adopter's lease simply expires).
--   phone_lookup_by NULL, phone_lookup_until NOT NULL: an adoption looked and found no phone;
--     the callback's own job looks it up alone, by today's rules, and is not adopted again.
ALTER TABLE callbacks ADD COLUMN phone_lookup_by TEXT;
ALTER TABLE callbacks ADD COLUMN phone_lookup_until TIMESTAMP;
