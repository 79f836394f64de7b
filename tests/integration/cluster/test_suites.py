"""The main multi-instance suites, on a Valkey Cluster (SPEC §11: "behaves exactly as on one node").

The tests are the single-node ones, imported: here they resolve `servers` (and the raw `valkey` client) to the
cluster variant from this directory's conftest. A selection, to keep CI time small: sessions and the cache
across instances, runs, interrupts/answers/permission changes across instances, rejoin, the queue,
idempotency, locks, rate limits and crash detection (the reaper's lease reads span every shard)."""

# ruff: noqa: F401 - the imported tests are collected here, on the cluster
from __future__ import annotations

from tests.integration.test_cache import (
    test_create_caches_and_get_is_served_from_the_cache,
    test_delete_leaves_no_resurrectable_cache_entry,
    test_miss_repopulates_from_postgres_after_flushall,
    test_no_stale_read_after_patch_through_the_other_instance,
    test_readers_racing_writers_never_leave_an_older_version_cached,
)
from tests.integration.test_concurrency import (
    test_concurrent_patches_across_instances_lose_no_update,
    test_held_lock_gives_409_session_locked_after_the_timeout,
)
from tests.integration.test_crash_detection import test_sigkill_is_detected_within_15_s_and_the_queue_moves_on
from tests.integration.test_idempotency import (
    test_session_create_replays_and_survives_a_valkey_flush,
    test_stream_replay_rejoins_the_original_run,
    test_twenty_concurrent_identical_requests_create_one_run,
)
from tests.integration.test_key_layout import (
    test_an_interrupt_reaches_only_the_owners_control_stream,
    test_every_key_is_in_one_hash_tag,
)
from tests.integration.test_rate_limit import test_limit_is_shared_by_instances_and_per_key
from tests.integration.test_runs import (
    test_answer_from_other_instance_reaches_agent,
    test_burst_2000_in_order,
    test_busy_session_gets_409_from_the_other_instance,
    test_events_replay_from_postgres_after_flush,
    test_interrupt_from_other_instance_is_fast,
    test_next_run_can_start_as_soon_as_done_is_seen,
    test_permission_mode_change_reaches_running_agent,
    test_query_creates_session_and_records_everything,
    test_rejoin_from_other_instance_after_disconnect,
    test_stale_interrupt_marker_does_not_stop_a_later_run,
)
from tests.integration.test_runs_resources import (
    test_background_run_lifecycle_across_instances,
    test_cancel_running_queued_and_ended,
    test_deleting_a_session_cancels_its_queue,
    test_enqueue_from_both_instances_runs_one_at_a_time_in_order,
    test_if_busy_interrupt_goes_next_ahead_of_the_queue,
    test_valkey_flush_never_lets_a_second_run_start,
)
from tests.integration.test_sessions import (
    test_concurrent_creates_all_listed,
    test_delete_removes_the_session,
    test_fork_copies_settings_and_links_parent,
    test_get_returns_same_session_from_either_instance,
    test_messages_fork_and_delete_carry_the_transcript,
    test_patch_changes_fields_and_bumps_version,
)
