-- The monthly deliverable, default long layout: one row for every sensor x direction x window.
--
-- Inputs registered by `jinryu monthly`:
--   month_windows(ord, window_start, date, time, closed)   every window of the month, local time
--   sensor_directions(sensor_ord, direction_ord, sensor_id, array, direction)   from the config
--   aggregates                                             the stored table
-- jinryu replaces {{from_date}} and {{to_date}} (the month's first and last local date, validated
-- ISO dates) before running, so only that month's date partitions are read.
--
-- status: 'closed' for windows entirely inside the facility's closed hours, 'ok' when the sensor
-- was live (count is then a measurement, 0 included), 'missing' otherwise. count is empty unless ok.
SELECT
    w.date,
    w.time,
    s.sensor_id,
    s.array,
    s.direction,
    CASE WHEN w.closed THEN NULL WHEN f.up THEN f."count" END AS "count",
    CASE WHEN w.closed THEN 'closed' WHEN f.up THEN 'ok' ELSE 'missing' END AS status
FROM month_windows w
CROSS JOIN sensor_directions s
LEFT JOIN (
    SELECT sensor_id, direction, window_start, SUM("count") AS "count", BOOL_OR(up) AS up
    FROM aggregates
    WHERE date >= '{{from_date}}' AND date <= '{{to_date}}'
    GROUP BY sensor_id, direction, window_start
) f
    ON f.sensor_id = s.sensor_id
   AND f.direction = s.direction
   AND f.window_start = w.window_start
ORDER BY w.ord, s.sensor_ord, s.direction_ord
