"""The subordinate-id advice for ordinary users is exact: only the missing steps, a range nobody has."""
from __future__ import annotations

from agent.instance.idmap import advice, free_range, plan

TAKEN = "alice:100000:65536\nbob:165536:65536\n1005:231072:65536\n"


def test_free_range_skips_every_range_of_both_files():
    assert free_range("", "") == 100000
    assert free_range(TAKEN, "") == 296608
    assert free_range("alice:100000:65536\n", "carol:165536:10\n") == 231072   # subgid ranges count too
    assert free_range("x:170000:5\n", "") == 100000                            # a gap before it is enough


def test_a_user_with_ranges_and_helpers_needs_nothing():
    assert advice("alice", 1000, 1000, subuid=TAKEN, subgid=TAKEN, helpers=True) is None


def test_a_user_with_ranges_needs_only_the_helpers():
    text = advice("alice", 1000, 1000, subuid=TAKEN, subgid=TAKEN, helpers=False)
    assert text.startswith("as root: `apt-get install uidmap`") and "usermod" not in text


def test_a_user_without_ranges_gets_a_free_one_not_a_fixed_one():
    text = advice("dave", 1004, 1004, subuid=TAKEN, subgid=TAKEN, helpers=True)
    assert text == "as root: `usermod --add-subuids 296608-362143 --add-subgids 296608-362143 dave`"


def test_only_the_missing_file_is_named():
    text = advice("alice", 1000, 1000, subuid=TAKEN, subgid="", helpers=True)
    assert "--add-subgids" in text and "--add-subuids" not in text


def test_a_range_given_by_uid_counts():
    assert advice("erin", 1005, 1005, subuid=TAKEN, subgid=TAKEN, helpers=True) is None


def test_the_instance_problem_carries_the_exact_advice():
    problem = plan(1004, 1004, "dave", subuid=TAKEN, subgid=TAKEN, helpers=False)["id_map_problem"]
    assert "dave lacks newuidmap/newgidmap, a range in /etc/subuid, a range in /etc/subgid" in problem
    assert "`usermod --add-subuids 296608-362143 --add-subgids 296608-362143 dave`" in problem
    assert problem.endswith("the instance is re-mapped when it next starts")
