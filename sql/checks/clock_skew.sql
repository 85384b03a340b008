-- clock_skew: messages quarantined for timestamps in the future or far in the past, per day they
-- were received. Any is a finding (a gateway clock is wrong; its counts are being lost).
SELECT CAST(NULL AS VARCHAR) AS sensor_id,
       MIN(received_at) AS window_start,
       CAST(COUNT(*) AS DOUBLE) AS value,
       CAST(0 AS DOUBLE) AS baseline,
       CAST(COUNT(*) AS VARCHAR) || ' messages with ' || reason AS detail
FROM quarantine
WHERE reason IN ('future_timestamp', 'timestamp_too_old')
  AND date >= '{{from_date}}' AND date <= '{{to_date}}'
GROUP BY date, reason
