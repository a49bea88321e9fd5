"""Dependency tracking: overlapping regions, rows of strided HBM views, covering writes."""

from moegen.perf.memory import MemoryTracker


def _region(b0, b1, pitch=0, row=0, rows=0, mem="hbm:out:0.1"):
    r = {"mem": mem, "parts": [0, 1], "bytes": [b0, b1]}
    if pitch:
        r.update(pitch=pitch, row_bytes=row, rows=rows)
    return r


def _tile(row0, col0, rows=128, cols=512, pitch=8192 * 4):
    """The bytes of out[row0:row0+rows, col0:col0+cols] of an fp32 [*, 8192] matrix."""
    b0 = row0 * pitch + col0 * 4
    return _region(b0, b0 + (rows - 1) * pitch + cols * 4, pitch, cols * 4, rows)


def test_column_tiles_of_one_matrix_do_not_depend_on_each_other():
    mem = MemoryTracker({"hbm:out:0.1"})
    first = mem.prepare([_tile(0, 0)], False)
    mem.record([], first, 100.0, 0)
    assert mem.wait_for([], mem.prepare([_tile(0, 512)], False))[0] == 0.0  # next column tile: independent
    assert mem.wait_for(mem.prepare([_tile(0, 0)], True), [])[0:3] == (100.0, 0, "RAW")  # same tile
    assert mem.wait_for(mem.prepare([_tile(64, 256)], True), [])[0] == 100.0  # overlapping rows and columns
    assert mem.wait_for(mem.prepare([_tile(128, 0)], True), [])[0] == 0.0  # the next row block


def test_a_covering_write_replaces_older_accesses():
    mem = MemoryTracker({"sbuf0"})
    tile = {"mem": "sbuf0", "parts": [0, 128], "bytes": [0, 2048]}
    mem.record([], mem.prepare([tile], False), 10.0, 0)
    mem.record(mem.prepare([tile], True), [], 20.0, 1)
    assert mem.wait_for([], mem.prepare([tile], False))[0:3] == (20.0, 1, "WAR")
    mem.record([], mem.prepare([tile], False), 30.0, 2)
    assert mem.writes[("sbuf0", 0)] == [[0, 128, 0, 2048, 30.0, 2, 0, 0, 0]] and mem.reads[("sbuf0", 0)] == []
    other = {"mem": "sbuf0", "parts": [0, 64], "bytes": [2048, 4096]}
    assert mem.wait_for(mem.prepare([other], True), [])[0] == 0.0


def test_read_only_memory_is_not_tracked():
    mem = MemoryTracker(set())
    assert mem.prepare([_region(0, 64, mem="hbm:w:0.1")], True) == []
