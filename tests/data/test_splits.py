"""phi3v_data.splits.carve_splits: val, then test, carved out of train by one loop for every converter."""

from __future__ import annotations

from phi3v_data.splits import Carved, carve_groups, carve_splits


def test_val_then_test_are_shares_of_the_whole_and_never_overlap() -> None:
    # 4 classes of 10 single items: 10% of 40 → 4 val, 20% of 40 → 8 test (not 20% of the 36 left)
    groups = {(f"c{c}", f"c{c}-{i}"): [f"c{c}-{i}"] for c in range(4) for i in range(10)}
    moved, carved = carve_splits(groups, {"val": 0.1, "test": 0.2}, seed=0)
    assert carved == [Carved("val", 4, 40, 0.1), Carved("test", 8, 40, 0.2)]
    assert list(moved.values()).count("val") == 4 and list(moved.values()).count("test") == 8
    val_alone, _ = carve_groups(groups, 0.1, seed=0, split="val")
    assert {key for key, split in moved.items() if split == "val"} == val_alone  # val is chosen as on its own
    assert carve_splits(groups, {"val": 0.1, "test": 0.2}, seed=0)[0] == moved  # deterministic


def test_whole_groups_move_and_a_zero_ratio_carves_nothing() -> None:
    groups = {(c, g): [f"{c}{g}{k}" for k in range(3)] for c in "ab" for g in "xyz"}  # 18 items, groups of 3
    moved, carved = carve_splits(groups, {"val": 0.0, "test": 0.3}, seed=1, source="dev")
    assert [(c.split, c.count, c.total, c.source) for c in carved] == [("test", 6, 18, "dev")]
    assert len(moved) == 6 and set(moved.values()) == {"test"}
    for members in groups.values():  # a group is moved whole or not at all
        assert len({moved.get(member) for member in members}) == 1
    assert carve_splits(groups, {"val": 0.0}, seed=0) == ({}, [])
