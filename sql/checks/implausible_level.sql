-- implausible_level: a window far from the sensor's own robust baseline for the same day type
-- (business day / holiday or weekend) and time of day, spikes and drops alike; one window is enough.
--   |count - median| > checks.level_k x spread  and  > checks.level_min_delta people
-- with the median and MAD over the checks.history_days days before *the checked window's own day*
-- (check_days: each checked date and the start of its history), so a check over a range finds
-- what daily checks over the same days find, and
-- spread = max(1.4826 x MAD, sqrt(median)): people counts vary by about sqrt(n) even when all is
-- well, and a few weeks of history can make the MAD alone too small.
WITH hist AS (
    SELECT d.date AS day, f.sensor_id, f.direction, w.day_type, w.time, CAST(f."count" AS DOUBLE) AS c
    FROM flow_15min f
    JOIN check_windows w ON w.window_start = f.window_start
    JOIN check_days d ON f.date >= d.hist_from AND f.date < d.date
    WHERE f.up AND NOT w.closed
      AND f.date >= '{{history_from}}' AND f.date < '{{to_date}}'
),
med AS (
    SELECT day, sensor_id, direction, day_type, time, median(c) AS m, COUNT(*) AS n
    FROM hist GROUP BY day, sensor_id, direction, day_type, time
),
mad AS (
    SELECT h.day, h.sensor_id, h.direction, h.day_type, h.time, median(abs(h.c - med.m)) AS mad
    FROM hist h JOIN med USING (day, sensor_id, direction, day_type, time)
    GROUP BY h.day, h.sensor_id, h.direction, h.day_type, h.time
)
SELECT f.sensor_id,
       f.window_start,
       CAST(f."count" AS DOUBLE) AS value,
       med.m AS baseline,
       CASE WHEN f."count" > med.m THEN 'spike' ELSE 'drop' END || ' in direction ' || f.direction
           || ' (usual ' || CAST(med.m AS VARCHAR) || ', robust spread ' || CAST(mad.mad AS VARCHAR) || ')' AS detail
FROM flow_15min f
JOIN check_windows w ON w.window_start = f.window_start AND NOT w.closed
JOIN med ON med.day = f.date AND med.sensor_id = f.sensor_id AND med.direction = f.direction AND med.day_type = w.day_type AND med.time = w.time
JOIN mad ON mad.day = f.date AND mad.sensor_id = f.sensor_id AND mad.direction = f.direction AND mad.day_type = w.day_type AND mad.time = w.time
WHERE f.up AND med.n >= 3
  AND f.date >= '{{from_date}}' AND f.date <= '{{to_date}}'
  AND abs(f."count" - med.m) > {{level_k}} * CASE WHEN 1.4826 * mad.mad > sqrt(med.m) THEN 1.4826 * mad.mad ELSE sqrt(med.m) END
  AND abs(f."count" - med.m) > {{level_min_delta}}
