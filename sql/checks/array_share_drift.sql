-- array_share_drift: a sensor's share of its array's people over a day drifts far from its usual
-- share (a partly blocked or misaimed head, a sensor counting a neighbour's lane). Only windows in
-- which every sensor of the array was live count — a silent sensor is sensor_offline's business.
-- Usual share: the median of the daily shares over the checks.history_days days before each
-- checked day (check_days), so a range check finds what daily checks find.
-- A day is a finding when |share - usual| > checks.share_drift and the array saw enough people.
WITH sizes AS (
    SELECT array, COUNT(*) AS n FROM sensors GROUP BY array
),
per AS (
    SELECT f.sensor_id, s.array, f.window_start, w.date, SUM(f."count") AS people
    FROM flow_15min f
    JOIN sensors s ON s.sensor_id = f.sensor_id
    JOIN check_windows w ON w.window_start = f.window_start AND NOT w.closed
    WHERE f.up AND f.date >= '{{history_from}}' AND f.date <= '{{to_date}}'
    GROUP BY f.sensor_id, s.array, f.window_start, w.date
),
complete AS (
    SELECT p.array, p.window_start
    FROM per p JOIN sizes z ON z.array = p.array
    GROUP BY p.array, p.window_start, z.n
    HAVING COUNT(*) = z.n
),
daily AS (
    SELECT p.sensor_id, p.array, p.date, SUM(p.people) AS people
    FROM per p JOIN complete c ON c.array = p.array AND c.window_start = p.window_start
    GROUP BY p.sensor_id, p.array, p.date
),
shares AS (
    SELECT sensor_id, array, date,
           CAST(people AS DOUBLE) / CAST(SUM(people) OVER (PARTITION BY array, date) AS DOUBLE) AS share,
           SUM(people) OVER (PARTITION BY array, date) AS array_people
    FROM daily
),
usual AS (
    SELECT d.date AS day, h.sensor_id, median(h.share) AS usual, COUNT(*) AS n
    FROM check_days d
    JOIN shares h ON h.date >= d.hist_from AND h.date < d.date
    WHERE h.array_people > 0
    GROUP BY d.date, h.sensor_id
),
first_window AS (
    SELECT date, MIN(window_start) AS window_start FROM check_windows GROUP BY date
)
SELECT s.sensor_id,
       fw.window_start,
       s.share AS value,
       u.usual AS baseline,
       'share of array ' || s.array || ' on ' || s.date || ': ' || CAST(round(s.share * 100) AS VARCHAR)
           || ' % (usual ' || CAST(round(u.usual * 100) AS VARCHAR) || ' %)' AS detail
FROM shares s
JOIN usual u ON u.sensor_id = s.sensor_id AND u.day = s.date
JOIN first_window fw ON fw.date = s.date
WHERE s.date >= '{{from_date}}' AND u.n >= 3
  AND s.array_people >= {{busy_people}} * 20
  AND abs(s.share - u.usual) > {{share_drift}}
