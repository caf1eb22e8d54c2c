-- dim_date: one row per calendar day from the first to the last event_date in `events`.
--
-- grain: date_key
-- unique_key: date_key
-- not_null: date_key, date
WITH bounds AS (
    SELECT min(event_date) AS first_day, max(event_date) AS last_day FROM events
),
days AS (
    SELECT unnest(generate_series(first_day, last_day, INTERVAL '1 day')) AS day
    FROM bounds
    WHERE first_day IS NOT NULL
)
SELECT
    CAST(to_char(day, '%Y%m%d') AS INT)                          AS date_key,
    CAST(day AS DATE)                                            AS date,
    to_char(day, '%A')                                           AS day_of_week,
    CAST(to_char(day, '%V') AS INT)                              AS iso_week,
    CAST(date_part('month', day) AS INT)                         AS month,
    CAST(date_part('quarter', day) AS INT)                       AS quarter,
    CAST(date_part('year', day) AS INT)                          AS year,
    date_part('dow', day) IN (0, 6)                              AS is_weekend
FROM days
