"""What persists: RocksDB state (partials, positions, watermarks) and the file:series of each view."""
