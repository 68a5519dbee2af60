-- The Nexmark streams over the built-in generator, as in Flink's nexmark ddl_gen.sql / ddl_views.sql.
-- Column names are lower case (Flink's dateTime, emailAddress, ... fold to them unquoted, so the
-- queries below read as Flink's). Change events (0 = unbounded), rate, seed, out_of_order_group.
CREATE STREAM person (id BIGINT, name VARCHAR, emailaddress VARCHAR, creditcard VARCHAR, city VARCHAR,
    state VARCHAR, datetime TIMESTAMP, extra VARCHAR,
    WATERMARK FOR datetime AS datetime - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'person', events = '10000000');
CREATE STREAM auction (id BIGINT, itemname VARCHAR, description VARCHAR, initialbid BIGINT, reserve BIGINT,
    datetime TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra VARCHAR,
    WATERMARK FOR datetime AS datetime - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'auction', events = '10000000');
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
    datetime TIMESTAMP, extra VARCHAR,
    WATERMARK FOR datetime AS datetime - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'bid', events = '10000000');
