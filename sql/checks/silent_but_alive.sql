-- silent_but_alive: heartbeats arrive but the sensor counts nobody, in either direction, while the
-- other sensors of its array average at least checks.busy_people people in the same window.
-- Raised after checks.silent_windows windows in a row.
WITH per_sensor AS (
    SELECT f.sensor_id, s.array, f.window_start, SUM(f."count") AS people
    FROM flow_15min f JOIN sensors s ON s.sensor_id = f.sensor_id
    JOIN check_windows w ON w.window_start = f.window_start AND NOT w.closed
    WHERE f.up AND f.date >= '{{from_date}}' AND f.date <= '{{to_date}}'
    GROUP BY f.sensor_id, s.array, f.window_start
)
SELECT a.sensor_id,
       a.window_start,
       CAST(a.people AS DOUBLE) AS value,
       AVG(CAST(b.people AS DOUBLE)) AS baseline,
       'counts 0 while its array is busy' AS detail
FROM per_sensor a
JOIN per_sensor b ON b.array = a.array AND b.window_start = a.window_start AND b.sensor_id <> a.sensor_id
WHERE a.people = 0
GROUP BY a.sensor_id, a.window_start, a.people
HAVING AVG(CAST(b.people AS DOUBLE)) >= {{busy_people}}
