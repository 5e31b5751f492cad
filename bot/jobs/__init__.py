"""The job engine: a durable queue of edit jobs that survives restarts, crashes and slow providers.

Every job is a database row with a state machine, and every transition is written *before* the
action it guards:

    queued ─reserve─▶ reserved ─slot─▶ submitting ─accepted─▶ submitted ─▶ completed ─▶ delivered
       └──────────────────┴───────────────────┴────────────────────┴─────────────┴──▶ failed / cancelled

* `queued`: the row and the input files exist, nothing is held yet (a refused reservation ends here).
* `reserved`: the credits are held and the job waits in the queue for a slot (global, per user, and
  per provider inside the router).
* `submitting`: a provider call is about to be / being made. For a synchronous provider the outcome
  of a call interrupted by a crash is unknown.
* `submitted`: a submit-then-poll provider accepted the job and its id is stored, so polling can
  resume after a restart.
* `completed`: the result files are on disk and described in the row; only delivery is left.
* `delivered` (hold captured) / `failed` / `cancelled` (hold released): terminal, each settled
  exactly once in the same transaction as the state change.

Money rule: the user is charged for a result they received, and for a job they cancelled after a
provider accepted it and gave it an id (the provider bills for that one; the Cancel button says so).
A job that ends any other way — cancelled before that, timed out, interrupted by a restart while
its outcome is unknown, or undeliverable — is released in full, even when the provider may have
billed us.

Nothing here knows about Discord: results and notices go through a `Delivery` (how to reach a user
from any process) and, while the job's own process is alive, a `LiveJob` (the command's progress
message and interaction). Interaction tokens are never stored.

Where things are: `model` (JobState, JobSpec, outcomes, errors, the Delivery/LiveJob protocols),
`engine` (JobEngine: submit, the queue and admission, cancel), `running` (the provider call),
`results` (the stored result), `delivery` (posting, redelivery retries), `endings` (release or
charge, and what the member is told), `recovery` (start-up recovery, quarantine, sweep, watchdog,
drain at shutdown), `leases` (which process runs a job; taking over a dead process's jobs; cancels
clicked on another process), `core` (the state JobEngine's parts share), `files` (a job's files on
disk).

This package imports none of its modules here, so `bot.storage` can import `bot.jobs.model` (its
job states) without a cycle.
"""
