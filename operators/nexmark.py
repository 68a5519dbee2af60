"""`connector = 'nexmark'`: the Nexmark benchmark's person, auction and bid streams.

Follows the model of the reference generator (Apache Beam's / Flink's nexmark `GeneratorConfig`,
`PersonGenerator`, `AuctionGenerator`, `BidGenerator`): one sequence of events in which event n is a
person when n % 50 < 1, an auction when < 4, else a bid; ids derived from n (people and auctions are
numbered as they are created, from 1000); sellers, bidders and auctions drawn "hot" with the reference
ratios (hot sellers 1 in 4 not, hot bidders 1 in 4 not, hot auctions 1 in 2 not, hot channels 1 in 2 not)
or else from the recently active ones; log-uniform prices in cents (10^(6u) x 100); categories 10-14;
auctions expiring within twice the in-flight horizon; `extra` padding to the reference average sizes.
Event n's time is `start + n x inter_event_delay`, permuted within groups of `out_of_order_group` events.

Every random field of event n is a hash of (seed, n, field), so any batching, restart or process gives
the same events (not the same bytes as the Java generator, whose java.util.Random sequence we do not
replay). Each stream declared over the generator (table = 'person' | 'auction' | 'bid') walks the same
event sequence and keeps its own kind, so the three streams are consistent with each other.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pondstream.operators.decode import conform
from pondstream.operators.source import Pacer, Source, SourceBatch

TS = pa.timestamp("us")
TOTAL, PERSON, AUCTION = 50, 1, 3  # proportions: person 1, auction 3, bid 46 of every 50 events
FIRST_ID, FIRST_CATEGORY, CATEGORIES = 1000, 10, 5
ACTIVE_PEOPLE, PERSON_LEAD, IN_FLIGHT_AUCTIONS, AUCTION_LEAD = 1000, 10, 100, 10
HOT_SELLERS, HOT_BIDDERS, HOT_AUCTIONS, HOT_CHANNELS_RATIO, CHANNELS = 4, 4, 2, 2, 10_000
HOT_CHANNELS = ["Google", "Facebook", "Baidu", "Apple"]
FIRST_NAMES = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"]
LAST_NAMES = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"]
CITIES = ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent",
          "Cheyenne"]
STATES = ["AZ", "CA", "ID", "OR", "WA", "WY"]
SIZES = {"person": 200, "auction": 500, "bid": 100}  # reference average event sizes in bytes: `extra` pads to them
SCHEMAS = {
    "person": pa.schema([("id", pa.int64()), ("name", pa.string()), ("emailaddress", pa.string()),
                         ("creditcard", pa.string()), ("city", pa.string()), ("state", pa.string()),
                         ("datetime", TS), ("extra", pa.string())]),
    "auction": pa.schema([("id", pa.int64()), ("itemname", pa.string()), ("description", pa.string()),
                          ("initialbid", pa.int64()), ("reserve", pa.int64()), ("datetime", TS),
                          ("expires", TS), ("seller", pa.int64()), ("category", pa.int64()), ("extra", pa.string())]),
    "bid": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                      ("channel", pa.string()), ("url", pa.string()), ("datetime", TS), ("extra", pa.string())]),
}
_POOL = np.frombuffer(np.random.default_rng(7).integers(97, 123, 1 << 20, dtype=np.uint8).tobytes(), np.uint8)


class NexmarkError(ValueError):
    pass


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a well-spread 64-bit hash (uint64 arithmetic wraps, as intended)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class Draws:
    """Random fields of events `ids` for one seed: field k of event n is a hash of (seed, n, k)."""

    def __init__(self, seed: int, ids: np.ndarray) -> None:
        with np.errstate(over="ignore"):
            self.base = _mix(ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed))

    def bits(self, field: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _mix(self.base + np.uint64(field) * np.uint64(0xD1B54A32D192ED03))

    def uniform(self, field: int) -> np.ndarray:
        return (self.bits(field) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def below(self, field: int, n: np.ndarray | int) -> np.ndarray:
        """Integers in [0, n) (n may differ per event)."""
        return (self.bits(field) >> np.uint64(1)).astype(np.int64) % np.asarray(n, np.int64)

    def text(self, field: int, length: int) -> pa.Array:
        """Lower-case letters, `length` per event, cut from a fixed pool at hashed offsets."""
        n = len(self.base)
        start = self.below(field, len(_POOL) - length)
        data = _POOL[(start[:, None] + np.arange(length)).ravel()]
        offsets = np.arange(0, (n + 1) * length, length, dtype=np.int32)
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))

    def pick(self, field: int, values: list[str]) -> pa.Array:
        return pc.take(pa.array(values), pa.array(self.below(field, len(values))))


def last_person(n: np.ndarray) -> np.ndarray:
    """The base-0 id of the latest person created at or before event n."""
    return n // TOTAL * PERSON + np.minimum(n % TOTAL, PERSON - 1)


def last_auction(n: np.ndarray) -> np.ndarray:
    """The base-0 id of the latest auction created at or before event n (-1 before the first)."""
    epoch, off = n // TOTAL, n % TOTAL
    return np.where(off < PERSON, epoch * AUCTION - 1, epoch * AUCTION + np.minimum(off - PERSON, AUCTION - 1))


def price(d: Draws, field: int) -> np.ndarray:
    """Log-uniform prices in cents, as the reference PriceGenerator: round(10^(6u) x 100)."""
    return np.round(np.power(10.0, d.uniform(field) * 6.0) * 100.0).astype(np.int64)


class NexmarkSource(Source):
    prefetch_safe = True

    def __init__(self, schema: pa.Schema, event_time: str, options: dict[str, str],
                 position: dict | None = None) -> None:
        self.table = options.get("table", "bid").lower()
        if self.table not in SCHEMAS:
            raise NexmarkError(f"nexmark table must be 'person', 'auction' or 'bid', got {self.table!r}")
        full = SCHEMAS[self.table]
        unknown = [n for n in schema.names if n.lower() not in full.names]
        if unknown:
            raise NexmarkError(f"nexmark {self.table} has columns {', '.join(full.names)}; it cannot fill "
                               f"{', '.join(unknown)}")
        try:
            self.events = int(options.get("events", 10_000_000))
            self.rate = float(options.get("rate", 0))
            self.seed = int(options.get("seed", 0))
            self.batch = int(options.get("batch_size", 100_000))
            self.group = int(options.get("out_of_order_group", 1))
            self.delay_us = int(1e6 / float(options.get("first_event_rate", 10_000)))
            self.start_us = pa.scalar(options.get("start", "2026-01-01 00:00:00")).cast(TS).value
        except (ValueError, pa.ArrowInvalid) as e:
            raise NexmarkError(f"nexmark option: {e}") from None
        if self.batch < 1 or self.group < 1 or self.delay_us < 1:
            raise NexmarkError("nexmark options batch_size, out_of_order_group and first_event_rate must be positive")
        self.schema, self.event_time = schema, event_time
        self.bounded = self.events > 0
        self.next_event = int((position or {}).get("event", 0))
        self.finished = self.bounded and self.next_event >= self.events
        self.pacer = Pacer(self.rate, self.next_event)

    def describe(self) -> str:
        total = f"{self.events:,} events" if self.bounded else "unbounded"
        return f"nexmark {self.table} ({total}, seed {self.seed})"

    def read(self) -> SourceBatch | None:
        if self.finished:
            return None
        n = self.pacer.allow(self.next_event, self.batch)
        if n == 0:
            return None
        if self.bounded:
            n = min(n, self.events - self.next_event)
        ev = np.arange(self.next_event, self.next_event + n, dtype=np.int64)
        off = ev % TOTAL
        kind = off < PERSON if self.table == "person" else (off >= PERSON) & (off < PERSON + AUCTION) \
            if self.table == "auction" else off >= PERSON + AUCTION
        ids = ev[kind]
        data = getattr(self, f"_{self.table}")(ids, Draws(self.seed, ids), self._times(ids))
        lower = {c.lower(): c for c in self.schema.names}
        data = pa.table({lower[c]: data.column(c) for c in data.column_names if c in lower})
        self.next_event += n
        self.finished = self.bounded and self.next_event >= self.events
        return SourceBatch(conform(data, self.schema), {"event": self.next_event})

    def _times(self, ids: np.ndarray) -> np.ndarray:
        """Event time of each event: its place in the sequence, shuffled within out-of-order groups."""
        if self.group == 1:
            slot = ids
        else:  # each group of events has its times rotated by a hashed amount: a permutation per group
            g = ids // self.group * self.group
            rot = Draws(self.seed ^ 0x5EED, g // self.group).below(0, self.group)
            slot = g + (ids - g + rot) % self.group
        return self.start_us + slot * self.delay_us

    def _extra(self, d: Draws, used: int) -> pa.Array:
        return d.text(99, max(SIZES[self.table] - used, 1))

    def _person(self, ids: np.ndarray, d: Draws, ts: np.ndarray) -> pa.Table:
        first, last = d.pick(1, FIRST_NAMES), d.pick(2, LAST_NAMES)
        cc = pc.binary_join_element_wise(*[pc.utf8_lpad(pa.array(d.below(3 + i, 10_000)).cast(pa.string()), 4, "0")
                                           for i in range(4)], " ")
        email = pc.binary_join_element_wise(d.text(7, 7), "@", d.text(8, 5), ".com", "")
        return pa.table({"id": last_person(ids) + FIRST_ID, "name": pc.binary_join_element_wise(first, last, " "),
                         "emailaddress": email, "creditcard": cc, "city": d.pick(9, CITIES),
                         "state": d.pick(10, STATES), "datetime": pa.array(ts).cast(TS), "extra": self._extra(d, 80)})

    def _recent_person(self, ids: np.ndarray, d: Draws, field: int) -> np.ndarray:
        """A base-0 person id among the recently active ones (reference nextBase0PersonId)."""
        people = last_person(ids) + 1
        active = np.minimum(people, ACTIVE_PEOPLE)
        return people - active + d.below(field, active + PERSON_LEAD)

    def _auction(self, ids: np.ndarray, d: Draws, ts: np.ndarray) -> pa.Table:
        hot = d.below(1, HOT_SELLERS) > 0
        seller = np.where(hot, last_person(ids) // HOT_SELLERS * HOT_SELLERS, self._recent_person(ids, d, 2))
        initial = price(d, 3)
        horizon = IN_FLIGHT_AUCTIONS * TOTAL // AUCTION * self.delay_us
        expires = ts + 1 + d.below(4, max(2 * horizon, 1))
        return pa.table({"id": last_auction(ids) + FIRST_ID, "itemname": d.text(5, 20), "description": d.text(6, 100),
                         "initialbid": initial, "reserve": initial + price(d, 7), "datetime": pa.array(ts).cast(TS),
                         "expires": pa.array(expires).cast(TS), "seller": seller + FIRST_ID,
                         "category": FIRST_CATEGORY + d.below(8, CATEGORIES), "extra": self._extra(d, 200)})

    def _bid(self, ids: np.ndarray, d: Draws, ts: np.ndarray) -> pa.Table:
        last = np.maximum(last_auction(ids), 0)
        low = np.maximum(last - IN_FLIGHT_AUCTIONS, 0)
        recent = low + d.below(2, last - low + 1 + AUCTION_LEAD)
        auction = np.where(d.below(1, HOT_AUCTIONS) > 0, last // HOT_AUCTIONS * HOT_AUCTIONS, recent)
        bidder = np.where(d.below(3, HOT_BIDDERS) > 0, last_person(ids) // HOT_BIDDERS * HOT_BIDDERS + 1,
                          self._recent_person(ids, d, 4))
        hot = d.below(5, HOT_CHANNELS_RATIO) > 0
        which = d.below(6, CHANNELS)
        channel = pc.if_else(pa.array(hot), pc.take(pa.array(HOT_CHANNELS), pa.array(which % len(HOT_CHANNELS))),
                             pc.binary_join_element_wise("channel-", pa.array(which).cast(pa.string()), ""))
        url = pc.binary_join_element_wise("https://www.nexmark.com/", d.text(7, 5), "/", d.text(8, 5),
                                          "/item.htm?query=1&channel_id=", pa.array(which).cast(pa.string()), "")
        return pa.table({"auction": auction + FIRST_ID, "bidder": bidder + FIRST_ID, "price": price(d, 9),
                         "channel": channel, "url": url, "datetime": pa.array(ts).cast(TS),
                         "extra": self._extra(d, 60)})
