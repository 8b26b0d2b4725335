DROP TABLE mango_waits;
