-- late_rate: share of count messages that arrived after their window was final, per local day,
-- above checks.late_rate.
SELECT CAST(NULL AS VARCHAR) AS sensor_id,
       MIN(window_start) AS window_start,
       SUM(CASE WHEN late THEN events ELSE 0 END) * 1.0 / SUM(events) AS value,
       CAST({{late_rate}} AS DOUBLE) AS baseline,
       'late messages on ' || date AS detail
FROM aggregates
WHERE date >= '{{from_date}}' AND date <= '{{to_date}}'
GROUP BY date
HAVING SUM(events) > 0 AND SUM(CASE WHEN late THEN events ELSE 0 END) * 1.0 / SUM(events) > {{late_rate}}
