-- stuck_count: the same non-zero count window after window (a frozen counter). Each window equal
-- to the previous open window of the same sensor and direction is a finding; raised after
-- checks.stuck_windows in a row.
WITH series AS (
    SELECT f.sensor_id, f.direction, f.window_start, f."count",
           LAG(f."count") OVER (PARTITION BY f.sensor_id, f.direction ORDER BY f.window_start) AS previous
    FROM flow_15min f
    JOIN check_windows w ON w.window_start = f.window_start AND NOT w.closed
    WHERE f.up AND f.date >= '{{from_date}}' AND f.date <= '{{to_date}}'
)
SELECT sensor_id,
       window_start,
       CAST("count" AS DOUBLE) AS value,
       CAST(previous AS DOUBLE) AS baseline,
       'direction ' || direction || ' repeats the same count' AS detail
FROM series
WHERE "count" > 0 AND "count" = previous
