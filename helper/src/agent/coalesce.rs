//! One pass at a time per pod, shared by the requests that wait for it: a pod's requests
//! that arrive while a pass of its own is in flight join the one pass that starts when it
//! ends, and all get its answer. However many requests a pod sends at once, it costs at
//! most the pass in flight and one more, which reads the pod as the newest request found
//! it (an earlier pass may have read the pod before what the newer requests ask about).
//!
//! The pass runs on a task of its own: a request that gives up (its connection closed, its
//! deadline passed) does not cancel the answer the others wait for.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// A request that may be folded into a pass not yet started.
pub(super) trait Absorb {
    /// Takes in `newer`, which arrived later for the same pass.
    fn absorb(&mut self, newer: Self);
}

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Turn {
    /// By a pass it started.
    Started,
    /// By a pass another request of the same pod had queued.
    Joined,
}

/// The passes of every pod, by `K`, for requests `R` answered `T`.
#[derive(Debug)]
pub(super) struct Coalescer<K, R, T> {
    lanes: Mutex<HashMap<K, Arc<Lane<R, T>>>>,
}

impl<K, R, T> Default for Coalescer<K, R, T> {
    fn default() -> Self {
        Coalescer {
            lanes: Mutex::default(),
        }
    }
}

/// One pod's passes: at most one running, and the one queued after it.
#[derive(Debug)]
struct Lane<R, T> {
    queued: Mutex<Option<Queued<R, T>>>,
    running: Arc<tokio::sync::Mutex<()>>,
}

/// The pass queued to start next, what it will be asked, and where its answer goes.
#[derive(Debug)]
struct Queued<R, T> {
    request: R,
    answer: watch::Sender<Option<T>>,
}

fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K, R, T> Coalescer<K, R, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Absorb + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// The answer to `request` of pod `key`: joins the pass queued for the pod, or queues
    /// one that runs `pass` once the pod's running pass (if any) is done. `None` when the
    /// pass ended without an answer (it panicked).
    pub(super) async fn answer<P, F>(
        self: &Arc<Self>,
        key: K,
        request: R,
        pass: P,
    ) -> (Option<T>, Turn)
    where
        P: FnOnce(R) -> F + Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let lane = {
            let mut lanes = lock(&self.lanes);
            Arc::clone(lanes.entry(key.clone()).or_insert_with(|| {
                Arc::new(Lane {
                    queued: Mutex::new(None),
                    running: Arc::default(),
                })
            }))
        };
        let (mut answer, turn) = {
            let mut queued = lock(&lane.queued);
            match queued.as_mut() {
                Some(next) => {
                    next.request.absorb(request);
                    (next.answer.subscribe(), Turn::Joined)
                }
                None => {
                    let (sender, receiver) = watch::channel(None);
                    *queued = Some(Queued {
                        request,
                        answer: sender,
                    });
                    (receiver, Turn::Started)
                }
            }
        };
        if turn == Turn::Started {
            tokio::spawn(Arc::clone(self).run(key, lane, pass));
        } else {
            drop(lane);
        }
        let answered = answer.wait_for(Option::is_some).await.ok();
        (answered.and_then(|answer| answer.clone()), turn)
    }

    /// Runs the pass queued on `lane` once the running one is done, and forgets the lane
    /// when nothing else waits on it.
    async fn run<P, F>(self: Arc<Self>, key: K, lane: Arc<Lane<R, T>>, pass: P)
    where
        P: FnOnce(R) -> F + Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let running = Arc::clone(&lane.running).lock_owned().await;
        let queued = lock(&lane.queued).take();
        if let Some(Queued { request, answer }) = queued {
            let answered = pass(request).await;
            answer.send_replace(Some(answered));
        }
        drop(running);
        let mut lanes = lock(&self.lanes);
        // The map's reference and this one: no request or pass holds the lane any more.
        if lock(&lane.queued).is_none() && Arc::strong_count(&lane) == 2 {
            lanes.remove(&key);
        }
    }

    /// How many pods have a pass queued or running.
    #[cfg(test)]
    pub(super) fn lanes(&self) -> usize {
        lock(&self.lanes).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A request that keeps the highest number asked.
    #[derive(Debug)]
    struct Highest(u32);

    impl Absorb for Highest {
        fn absorb(&mut self, newer: Self) {
            self.0 = self.0.max(newer.0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_during_a_pass_share_the_one_after_it_which_sees_the_newest() {
        let coalescer: Arc<Coalescer<&str, Highest, u32>> = Arc::default();
        let passes = Arc::new(AtomicUsize::new(0));
        let ask = |n: u32| {
            let (coalescer, passes) = (Arc::clone(&coalescer), Arc::clone(&passes));
            async move {
                coalescer
                    .answer("pod", Highest(n), move |asked| async move {
                        passes.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        asked.0
                    })
                    .await
            }
        };
        let first = tokio::spawn(ask(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let later = futures::future::join_all((2..=200).map(ask)).await;
        assert_eq!(first.await.expect("first"), (Some(1), Turn::Started));
        assert_eq!(
            passes.load(Ordering::SeqCst),
            2,
            "the pass in flight and one more"
        );
        assert_eq!(later[0], (Some(200), Turn::Started));
        assert!(
            later[1..]
                .iter()
                .all(|answer| *answer == (Some(200), Turn::Joined))
        );
        tokio::task::yield_now().await;
        assert_eq!(coalescer.lanes(), 0, "nothing kept once every pass is done");
    }

    #[tokio::test(start_paused = true)]
    async fn pods_do_not_wait_for_each_other() {
        let coalescer: Arc<Coalescer<&str, Highest, u32>> = Arc::default();
        let slow = {
            let coalescer = Arc::clone(&coalescer);
            tokio::spawn(async move {
                coalescer
                    .answer("slow", Highest(1), |asked| async move {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        asked.0
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = tokio::time::Instant::now();
        let quick = coalescer
            .answer("quick", Highest(2), |asked| async move { asked.0 })
            .await;
        assert_eq!(quick, (Some(2), Turn::Started));
        assert!(started.elapsed() < Duration::from_millis(1));
        assert_eq!(slow.await.expect("slow").0, Some(1));
    }

    #[tokio::test]
    async fn a_request_that_gives_up_leaves_the_pass_to_those_that_wait() {
        let coalescer: Arc<Coalescer<&str, Highest, u32>> = Arc::default();
        let pass = |asked: Highest| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            asked.0
        };
        let gave_up = tokio::time::timeout(
            Duration::from_millis(5),
            coalescer.answer("pod", Highest(1), pass),
        )
        .await;
        assert!(gave_up.is_err());
        let (answer, _) = coalescer.answer("pod", Highest(2), pass).await;
        assert!(answer.is_some_and(|n| n >= 1));
    }
}
