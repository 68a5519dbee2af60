-- q0 pass-through: every bid.
CREATE MATERIALIZED VIEW q0 AS SELECT auction, bidder, price, datetime, extra FROM bid;
