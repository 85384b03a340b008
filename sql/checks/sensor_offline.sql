-- sensor_offline: the sensor showed no liveness (no count message, no 'ok' heartbeat) in an open
-- window. jinryu joins consecutive windows into one alert and raises it after
-- checks.offline_windows windows in a row. Closed hours are never checked.
-- Output of every check: sensor_id, window_start, value, baseline, detail.
SELECT s.sensor_id,
       w.window_start,
       CAST(COALESCE(MAX(f.faults), 0) AS DOUBLE) AS value,
       CAST(0 AS DOUBLE) AS baseline,
       CASE WHEN COALESCE(MAX(f.faults), 0) > 0 THEN 'sensor reported fault' ELSE 'no heartbeat and no counts' END AS detail
FROM check_windows w
CROSS JOIN sensors s
LEFT JOIN flow_15min f
       ON f.sensor_id = s.sensor_id AND f.window_start = w.window_start
      AND f.date >= '{{from_date}}' AND f.date <= '{{to_date}}'
WHERE NOT w.closed
GROUP BY s.sensor_id, w.window_start
HAVING NOT COALESCE(BOOL_OR(f.up), false)
