//! Delivery in pass-through mode: one attempt, split as the pipeline splits.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::sink::forward::verdict::{Failure, UpstreamError, Verdict};
use crate::sink::forward::Upstream;
use crate::sink::Record;

/// Delivers records once, without retrying (pass-through mode: the client
/// retries), but splitting a request the upstream finds too large or
/// refuses without naming the record, as the pipeline does. A failure
/// about the upstream fails the whole call.
pub async fn deliver_now(
    upstream: Arc<dyn Upstream>,
    records: Arc<[Record]>,
) -> Result<Vec<Verdict>, UpstreamError> {
    let mut verdicts = vec![Verdict::Retry; records.len()];
    // Ranges still to send, in order.
    let mut todo = VecDeque::from([(0, records.len())]);
    let mut limit = records.len().max(1);
    while let Some((start, len)) = todo.pop_front() {
        if len > limit {
            let mut cut: VecDeque<_> = (start..start + len)
                .step_by(limit)
                .map(|at| (at, limit.min(start + len - at)))
                .collect();
            cut.extend(todo);
            todo = cut;
            continue;
        }
        let part: Arc<[Record]> = if len == records.len() {
            records.clone()
        } else {
            records[start..start + len].into()
        };
        match upstream.deliver(part).await {
            Ok(answer) if answer.len() == len => {
                for (v, a) in verdicts[start..start + len].iter_mut().zip(answer) {
                    *v = a;
                }
            }
            Ok(answer) => {
                return Err(UpstreamError::transient(format!(
                    "upstream answered for {} of {len} records",
                    answer.len()
                )))
            }
            Err(e) => {
                let size = match &e.class {
                    Failure::Limit { max } if len > 1 => {
                        max.unwrap_or(len.div_ceil(2)).clamp(1, len.div_ceil(2))
                    }
                    Failure::TooBig | Failure::Refused(_) if len > 1 => len.div_ceil(2),
                    Failure::TooBig => {
                        verdicts[start] =
                            Verdict::Rejected(format!("too large for the upstream: {}", e.message));
                        continue;
                    }
                    Failure::Refused(why) => {
                        verdicts[start] = Verdict::Rejected(why.clone());
                        continue;
                    }
                    _ => return Err(e),
                };
                limit = limit.min(size);
                todo.push_front((start, len));
            }
        }
    }
    Ok(verdicts)
}
