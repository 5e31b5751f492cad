"""Which models and routes are live right now: the catalog's dates plus what the providers said.

The catalog (`bot.catalog`) is what we wrote down; this module is what is true today. A route is dead
when its provider is not configured, its shutdown date has passed (the catalog's, or the date OpenAI's
`GET /v1/models` announces), OpenAI's list no longer has the model, or the provider answered "model
gone" to an edit (`ModelGone`). A model is usable while one configured route of it is live; it is
dead only when all are. Run-time facts are persisted (`route_status`), so a restart does not ask a dead
route again, and every change is announced through `on_event` (the audit channel).

A "model gone" answer is not always right (an input failure worded like one: a 404 "Image not found"
for an upload), and no reseller publishes a model list that could bring its route back. So a route
retired by such an answer is tried again once `gone_retry_hours` have passed since it was retired
(`trial_due`): it is live again, in its place in the route order, until the provider answers. Only two
answers change anything: a result brings it back (`answered`, run beside the served job by `heard`), and
"model gone" again (`retire`) restarts its cool-off. Any other failure (a 5xx, a refused input, a
timeout) leaves the trial due and the next job asks again; a provider that keeps failing is the circuit
breaker's to skip. Either write is conditional on the stamp the process read, so of the processes that
saw one trial due only the first answer counts (and is announced); the others read it back. A trial
costs nobody anything: "model gone" means nothing ran, and the router moves the job to the model's next
route, or to another model, as on the first answer. While a trial is due the
route counts as live everywhere (the model is usable, a default may point at it, `/healthz` has a
live model): the trial is the question "is it back?", and one place answers it. The operator may
also bring a route back by hand (`revive`, `/owner revive`). Routes ended by a date or by OpenAI's
model list are not tried again: those sources are read again instead.

Without `DEFAULT_MODEL`, the default is the first catalog model that is usable here: catalog order
is preference, so a bot with only an Atlas Cloud key edits with what Atlas sells, and a shutdown
moves everyone who did not pick a model to the next live one. Nothing here knows about Discord.

The package, by concern: `live` (`ModelLifecycle`: reading, learning, trying again), `facts` (what run
time learned about each route, kept the same in memory and in storage by one class, `RouteBook`),
`views` (the operator's and admins' view: route states, notices) and `discovery` (reading a provider's
model list). Import from `bot.lifecycle`.
"""

from bot.lifecycle.discovery import (
    DISCOVERY_INTERVAL_SECONDS,
    DISCOVERY_TIMEOUT_SECONDS,
    IMAGE_MODEL_PREFIX,
    OPENAI,
    DiscoveryReport,
    ListedModel,
    Lister,
    discover_forever,
    discover_once,
)
from bot.lifecycle.facts import RouteBook, RouteFacts, RouteStore
from bot.lifecycle.live import (
    FLUSH_TIMEOUT_SECONDS,
    NO_LIVE_MODEL_PROBLEM,
    Event,
    ModelLifecycle,
    Now,
    Today,
)
from bot.lifecycle.views import ModelNotice, RouteState

__all__ = [
    "DISCOVERY_INTERVAL_SECONDS",
    "DISCOVERY_TIMEOUT_SECONDS",
    "FLUSH_TIMEOUT_SECONDS",
    "IMAGE_MODEL_PREFIX",
    "NO_LIVE_MODEL_PROBLEM",
    "OPENAI",
    "DiscoveryReport",
    "Event",
    "ListedModel",
    "Lister",
    "ModelLifecycle",
    "ModelNotice",
    "Now",
    "RouteBook",
    "RouteFacts",
    "RouteState",
    "RouteStore",
    "Today",
    "discover_forever",
    "discover_once",
]
