//! librdkafka's callbacks for a consumer-group member: statistics (consumer lag), client errors
//! and rebalances. What to do with assigned and revoked partitions is the caller's
//! ([`Partitions`]); this module applies the assignment the way the group's protocol (eager or
//! cooperative) needs.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

/// What a consumer does with its partitions.
pub trait Partitions: Send + Sync + Sized + 'static {
    /// The topic consumed.
    fn topic(&self) -> &str;
    /// Partitions were assigned: open them, and set each one's start offset in `tpl`.
    fn assign(&self, tpl: &mut TopicPartitionList);
    /// Partitions are revoked (or lost: `consumer.assignment_lost()`): commit or release them.
    fn revoke(&self, consumer: &BaseConsumer<Ctx<Self>>, tpl: &TopicPartitionList);
    /// Consumer lag per partition and in all, from the client's statistics.
    fn lag(&self, per_partition: &[(i32, i64)], total: i64);
    /// An error the client reports (it retries by itself).
    fn client_error(&self, error: &KafkaError, reason: &str);
}

/// librdkafka's context: the callbacks, forwarded to `P`.
pub struct Ctx<P>(pub Arc<P>);

impl<P: Partitions> ClientContext for Ctx<P> {
    fn stats(&self, stats: Statistics) {
        if let Some(t) = stats.topics.get(self.0.topic()) {
            let lags: Vec<(i32, i64)> = t
                .partitions
                .iter()
                .filter(|(p, s)| **p >= 0 && s.consumer_lag >= 0)
                .map(|(p, s)| (*p, s.consumer_lag))
                .collect();
            let total = lags.iter().map(|l| l.1).sum();
            self.0.lag(&lags, total);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.client_error(&error, reason);
    }
}

impl<P: Partitions> ConsumerContext for Ctx<P> {
    /// Revoked partitions go through [`Partitions::revoke`] before they are released; assigned
    /// partitions through [`Partitions::assign`] (which sets their start) before they are taken.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.0.assign(tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.0.revoke(consumer, tpl);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "kafka: rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "kafka: applying the assignment failed");
        }
    }
}
