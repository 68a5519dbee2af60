-- q3 local item suggestion, as an interval join: auctions in category 10 by sellers from OR, ID or CA
-- who signed up at most an hour before (Flink's q3 is an unbounded join; pondstream needs the time bound).
CREATE MATERIALIZED VIEW q3 AS
SELECT p.name, p.city, p.state, a.id, a.datetime
FROM auction a JOIN person p
  ON a.seller = p.id AND a.datetime BETWEEN p.datetime AND p.datetime + INTERVAL '1' HOUR
WHERE a.category = 10 AND (p.state = 'OR' OR p.state = 'ID' OR p.state = 'CA');
