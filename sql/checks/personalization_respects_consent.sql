-- personalization_respects_consent: no customer whose latest personalization consent is a
-- withdrawal is in agg_user_interest, agg_user_features or user_segments.
SELECT 'agg_user_interest' AS in_table, i.user_key
FROM agg_user_interest i
JOIN user_consent c ON c.user_key = i.user_key AND c.purpose = 'personalization' AND NOT c.granted
UNION ALL
SELECT 'agg_user_features' AS in_table, f.user_key
FROM agg_user_features f
JOIN user_consent c ON c.user_key = f.user_key AND c.purpose = 'personalization' AND NOT c.granted
UNION ALL
SELECT 'user_segments' AS in_table, s.user_key
FROM user_segments s
JOIN user_consent c ON c.user_key = s.user_key AND c.purpose = 'personalization' AND NOT c.granted
