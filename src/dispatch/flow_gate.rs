//! The waiting room of calls with a flow-control key: each asks the store whether it may start
//! (counted from the rows of every node, see `Store::flow_admit`) and, while it may not, waits
//! its turn without failing.
//!
//! I/O shell. In one process the calls of a key wait in the store's order (when each first
//! asked, then its run and outbox id), so the first here is the one the store lets through
//! first; only it asks the store again on its own (when its time comes, or every [`POLL`] for
//! calls of other nodes that ended); a call of the key that ends or starts wakes the first, so a
//! key with many waiting calls costs one store transaction per call that ends, not one per
//! waiting call.

use crate::engine::request::FlowTicket;
use crate::flow::Admission;
use crate::store::{FlowAnswer, FlowAsk, Store};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::warn;

/// How often the first waiting call of a key asks again, for calls of other nodes that ended.
const POLL: Duration = Duration::from_millis(250);
/// How long after a store error a call asks again.
const AFTER_ERROR: Duration = Duration::from_secs(1);

/// A waiting call's place in the store's line: when it first asked (ms), its run, its row.
type Order = (i64, String, i64);

#[derive(Default)]
struct Queue {
    next_ticket: u64,
    /// In the store's order; a call that has not had its first answer yet is at the end.
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    ticket: u64,
    order: Option<Order>,
    wake: Arc<Notify>,
}

impl Queue {
    fn wake_first(&self) {
        if let Some(w) = self.waiting.front() {
            w.wake.notify_one();
        }
    }
}

/// Calls in flight and waiting, per key, in this process.
pub struct FlowGate {
    store: Store,
    queues: Mutex<HashMap<String, Queue>>,
    /// (run, outbox id) of admitted calls → their key, to wake the key's next call when one ends.
    admitted: Mutex<HashMap<(String, i64), String>>,
}

/// Leaves the key's queue when dropped (admitted, gone, or the task aborted by a cancel) and
/// hands the wake on to the new first call.
struct Place<'a> {
    gate: &'a FlowGate,
    key: &'a str,
    ticket: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut queues = self.gate.lock_queues();
        if let Some(q) = queues.get_mut(self.key) {
            q.waiting.retain(|w| w.ticket != self.ticket);
            q.wake_first();
            if q.waiting.is_empty() {
                queues.remove(self.key);
            }
        }
    }
}

impl FlowGate {
    pub fn new(store: Store) -> FlowGate {
        FlowGate {
            store,
            queues: Mutex::new(HashMap::new()),
            admitted: Mutex::new(HashMap::new()),
        }
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a call at its place in the store's order; answers whether it is first.
    fn place(&self, key: &str, ticket: u64, order: Order) -> bool {
        let mut queues = self.lock_queues();
        let Some(q) = queues.get_mut(key) else {
            return false;
        };
        if let Some(i) = q.waiting.iter().position(|w| w.ticket == ticket) {
            let mut me = q.waiting.remove(i).expect("found");
            me.order = Some(order);
            let at = q
                .waiting
                .iter()
                .position(|w| {
                    w.order
                        .as_ref()
                        .is_none_or(|o| *o > *me.order.as_ref().expect("set"))
                })
                .unwrap_or(q.waiting.len());
            q.waiting.insert(at, me);
        }
        q.waiting.front().is_some_and(|w| w.ticket == ticket)
    }

    /// Waits until the call (outbox row `effect_id` of `run_id`) may start. Answers false when
    /// its row is gone (the run was cancelled or finished meanwhile): then it must not be sent.
    pub async fn admit(&self, ticket: &FlowTicket, run_id: &str, effect_id: i64) -> bool {
        let me = Arc::new(Notify::new());
        let place = {
            let mut queues = self.lock_queues();
            let q = queues.entry(ticket.key.clone()).or_default();
            q.next_ticket += 1;
            q.waiting.push_back(Waiter {
                ticket: q.next_ticket,
                order: None,
                wake: me.clone(),
            });
            Place {
                gate: self,
                key: &ticket.key,
                ticket: q.next_ticket,
            }
        };
        let ask = FlowAsk {
            run_id: run_id.to_string(),
            effect_id,
            key: ticket.key.clone(),
            limits: ticket.limits,
        };
        loop {
            let answer = match self.store.flow_admit(ask.clone(), Utc::now()).await {
                Ok(a) => a,
                Err(e) => {
                    warn!(key = %ticket.key, error = %e, "cannot ask whether a call of a flow-control key may start; asking again");
                    let _ = tokio::time::timeout(AFTER_ERROR, me.notified()).await;
                    continue;
                }
            };
            let (wait, since) = match answer {
                FlowAnswer::Admitted => {
                    self.admitted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((run_id.to_string(), effect_id), ticket.key.clone());
                    drop(place); // the next call may fit too: it asks now
                    return true;
                }
                FlowAnswer::Gone => return false,
                FlowAnswer::Wait { admission, since } => (admission, since),
            };
            // Only the first call asks again on its own; the others when woken.
            let first = self.place(
                &ticket.key,
                place.ticket,
                (since, run_id.to_string(), effect_id),
            );
            if first {
                let until = match wait {
                    Admission::At(t) => sleep_for(t),
                    _ => POLL,
                };
                let _ = tokio::time::timeout(until, me.notified()).await;
            } else {
                me.notified().await;
            }
        }
    }

    /// An admitted call's outcome was stored (its row is gone): the key's next call asks.
    pub fn ended(&self, run_id: &str, effect_id: i64) {
        let key = self
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(run_id.to_string(), effect_id));
        if let Some(key) = key
            && let Some(q) = self.lock_queues().get(&key)
        {
            q.wake_first();
        }
    }

    /// A call of the key was answered 429 or 503 with `Retry-After`: no call of it starts
    /// before `until`, on any node.
    pub async fn close(&self, key: &str, until: DateTime<Utc>) {
        if let Err(e) = self.store.flow_close(key, until).await {
            warn!(key, error = %e, "cannot close a flow-control key after a Retry-After");
        }
    }
}

fn sleep_for(t: DateTime<Utc>) -> Duration {
    (t - Utc::now())
        .to_std()
        .unwrap_or_default()
        .min(Duration::from_secs(5))
}
