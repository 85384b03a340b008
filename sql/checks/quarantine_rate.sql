-- quarantine_rate: share of the messages received on a day (files and Kafka, from the `intake`
-- table) that went to quarantine, above checks.quarantine_rate. Days are the days the messages
-- were received, so a backfill of an old month is judged on the day it was run.
SELECT CAST(NULL AS VARCHAR) AS sensor_id,
       MIN(day_start) AS window_start,
       SUM(quarantined) * 1.0 / SUM(records) AS value,
       CAST({{quarantine_rate}} AS DOUBLE) AS baseline,
       CAST(SUM(quarantined) AS VARCHAR) || ' of ' || CAST(SUM(records) AS VARCHAR)
         || ' messages received on ' || date || ' were quarantined' AS detail
FROM intake
WHERE date >= '{{from_date}}' AND date <= '{{to_date}}'
GROUP BY date
HAVING SUM(records) > 0 AND SUM(quarantined) * 1.0 / SUM(records) > {{quarantine_rate}}
