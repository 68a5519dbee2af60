-- q20 expand bid with auction: bids on category-10 auctions with their auction's fields. Flink joins
-- the two streams without a time bound; here each bid meets its auction as of the bid's time (a
-- temporal join: an auction exists before its bids), which keeps one row per auction in state.
CREATE MATERIALIZED VIEW q20 AS
SELECT b.auction, b.bidder, b.price, b.channel, b.url, b.datetime, b.extra,
       a.itemname, a.description, a.initialbid, a.reserve, a.datetime AS adatetime, a.expires, a.seller,
       a.category, a.extra AS aextra
FROM bid AS b JOIN auction FOR SYSTEM_TIME AS OF b.datetime AS a ON b.auction = a.id
WHERE a.category = 10;
