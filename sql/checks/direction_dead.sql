-- direction_dead: one direction counts nobody while the other direction of the same sensor counts
-- at least checks.busy_people; raised after checks.direction_dead_windows windows in a row.
SELECT a.sensor_id,
       a.window_start,
       CAST(a."count" AS DOUBLE) AS value,
       CAST(b."count" AS DOUBLE) AS baseline,
       'direction ' || a.direction || ' counts 0 while ' || b.direction || ' is busy' AS detail
FROM flow_15min a
JOIN flow_15min b ON b.sensor_id = a.sensor_id AND b.window_start = a.window_start AND b.direction <> a.direction
JOIN check_windows w ON w.window_start = a.window_start AND NOT w.closed
WHERE a.up AND b.up AND a."count" = 0 AND b."count" >= {{busy_people}}
  AND a.date >= '{{from_date}}' AND a.date <= '{{to_date}}'
