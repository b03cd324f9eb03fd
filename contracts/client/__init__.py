"""`tokenhub.client`: the producer client for usage events.

Builds CloudEvents 1.0 usage events with ids that make retries safe, maps
provider usage objects into Token Hub's disjoint classes, and sends batches
to `usage.reported` with acks=all and retries (docs/architecture.md, Delivery semantics).
"""

from tokenhub.client.mapping import from_anthropic_usage, from_dashscope_usage, from_openai_usage
from tokenhub.client.producer import SyncUsageClient, UsageClient, usage_event
from tokenhub.client.security import KafkaSecurity

__all__ = ["UsageClient", "SyncUsageClient", "KafkaSecurity", "usage_event", "from_openai_usage", "from_anthropic_usage",
           "from_dashscope_usage"]
