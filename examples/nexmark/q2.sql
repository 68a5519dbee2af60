-- q2 selection: bids on a few auctions (Flink: MOD(auction, 123) = 0).
CREATE MATERIALIZED VIEW q2 AS SELECT auction, price FROM bid WHERE auction % 123 = 0;
