-- flow_15min: one row per sensor, direction and window.
--
-- The aggregates table is additive: late data arrive as extra rows, so the true figures of a
-- (sensor, direction, window) are the SUM over its rows. This view does that sum once, for everyone.
--   count       people counted
--   events      count messages behind it
--   heartbeats  'ok' heartbeats (liveness evidence)
--   faults      'fault' heartbeats (the sensor said it could not count)
--   up          the sensor showed liveness: count is a measurement (0 means nobody passed)
--   has_late    some of the figures arrived after the window was first written
-- A window with no row at all is missing: the sensor showed no sign of life.
CREATE VIEW flow_15min AS
SELECT
    sensor_id,
    direction,
    window_start,
    SUM("count")     AS "count",
    SUM(events)      AS events,
    SUM(heartbeats)  AS heartbeats,
    SUM(faults)      AS faults,
    BOOL_OR(up)      AS up,
    BOOL_OR(late)    AS has_late,
    MIN(date)        AS date
FROM aggregates
GROUP BY sensor_id, direction, window_start
