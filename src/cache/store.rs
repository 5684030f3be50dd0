//! The response store: a moka cache weighed by bytes, keyed by the primary key (the rendered
//! key template), holding the variants selected by `Vary` (RFC 9111 §4.1); and the flights
//! that collapse concurrent misses and refreshes of one key into one origin request.
//!
//! Synchronous (moka's `sync::Cache`): lookups and inserts are short and happen inside body
//! polling, where nothing may await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::Notify;

use super::policy::{vary_matches, EntryMeta};

/// Most variants kept per primary key.
const MAX_VARIANTS: usize = 8;

/// One stored response.
#[derive(Debug)]
pub struct Stored {
    /// Status.
    pub status: StatusCode,
    /// Header fields as stored (hop-by-hop removed).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Freshness and validation metadata.
    pub meta: EntryMeta,
}

impl Stored {
    fn weight(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>()
            + 256
    }
}

/// Every stored response of a key (one per secondary key), newest first.
pub type Variants = Arc<Vec<Arc<Stored>>>;

/// The cache of one gateway.
pub struct Store {
    cache: moka::sync::Cache<String, Variants>,
    flights: Mutex<HashMap<String, Arc<Fetch>>>,
}

/// One origin fetch that several requests share: the leader publishes the response head and
/// body chunks as they arrive, followers stream them (request collapsing without waiting for
/// the whole body).
#[derive(Default)]
pub struct Fetch {
    state: Mutex<FetchState>,
    changed: Notify,
}

#[derive(Default)]
struct FetchState {
    head: Option<(StatusCode, HeaderMap)>,
    chunks: Vec<Bytes>,
    /// `Some(true)`: complete; `Some(false)`: abandoned (error, not storable, too large).
    end: Option<bool>,
}

/// What a follower sees next.
pub enum Next {
    /// The next body chunk.
    Chunk(Bytes),
    /// The body is complete.
    Done,
    /// The leader failed or gave up.
    Failed,
}

impl Fetch {
    fn lock(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most until `deadline`) for the response head; `None` if the leader gave up
    /// first or time ran out: the follower then goes to the origin itself.
    pub async fn head(&self, deadline: tokio::time::Instant) -> Option<(StatusCode, HeaderMap)> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let st = self.lock();
                if let Some(h) = &st.head {
                    return Some(h.clone());
                }
                if st.end.is_some() {
                    return None;
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// The `i`-th body chunk, waiting for it if needed.
    pub async fn chunk(&self, i: usize) -> Next {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let st = self.lock();
                if let Some(c) = st.chunks.get(i) {
                    return Next::Chunk(c.clone());
                }
                match st.end {
                    Some(true) => return Next::Done,
                    Some(false) => return Next::Failed,
                    None => {}
                }
            }
            changed.await;
        }
    }
}

/// The result of [`Store::join`].
pub enum Flight {
    /// This request fetches and publishes through the guard.
    Leader(FlightGuard),
    /// Another request is fetching this key.
    Follower(Arc<Fetch>),
}

/// Held by the request fetching a key. Dropping it without [`FlightGuard::complete`] tells the
/// followers the fetch failed.
pub struct FlightGuard {
    store: Arc<Store>,
    key: String,
    fetch: Arc<Fetch>,
}

impl FlightGuard {
    /// Publishes the response head (only for a response that will be stored).
    pub fn head(&self, status: StatusCode, headers: HeaderMap) {
        self.fetch.lock().head = Some((status, headers));
        self.fetch.changed.notify_waiters();
    }

    /// Publishes a body chunk.
    pub fn chunk(&self, data: Bytes) {
        self.fetch.lock().chunks.push(data);
        self.fetch.changed.notify_waiters();
    }

    /// The body is complete (and stored).
    pub fn complete(self) {
        self.fetch.lock().end = Some(true);
        // Drop runs next: removes the flight and wakes the followers.
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.store.flights_lock().remove(&self.key);
        self.fetch.lock().end.get_or_insert(false);
        self.fetch.changed.notify_waiters();
    }
}

/// The variant whose `Vary` fields match this request.
pub fn matching(variants: &[Arc<Stored>], req_headers: &HeaderMap) -> Option<Arc<Stored>> {
    variants
        .iter()
        .find(|s| vary_matches(&s.meta, req_headers))
        .cloned()
}

/// The only variant if it varies on nothing: it then answers every request for the key,
/// whatever the request's fields.
pub fn unvaried(variants: &[Arc<Stored>]) -> Option<&Arc<Stored>> {
    match variants {
        [only] if only.meta.vary.is_empty() => Some(only),
        _ => None,
    }
}

impl Store {
    /// A store of at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Arc<Store> {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Variants| {
                let w = k.len() + v.iter().map(|s| s.weight()).sum::<usize>();
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .build();
        Arc::new(Store {
            cache,
            flights: Mutex::new(HashMap::new()),
        })
    }

    fn flights_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Fetch>>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored responses of `key`: one read (and one popularity count) per request, shared
    /// by the quick path and `proxy::cached::serve`.
    pub fn variants(&self, key: &str) -> Option<Variants> {
        self.cache.get(key)
    }

    /// Stores a response, replacing the variant with the same secondary key.
    pub fn insert(&self, key: &str, stored: Stored) {
        let secondary = stored.meta.secondary_key();
        let stored = Arc::new(stored);
        let mut list: Vec<Arc<Stored>> = self
            .cache
            .get(key)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        list.retain(|s| s.meta.secondary_key() != secondary);
        list.insert(0, stored);
        list.truncate(MAX_VARIANTS);
        self.cache.insert(key.to_string(), Arc::new(list));
    }

    /// Removes every variant of `key`; returns whether there was one.
    pub fn invalidate(&self, key: &str) -> bool {
        self.cache.remove(key).is_some()
    }

    /// Removes every key starting with `prefix`; returns how many.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let keys: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            self.cache.invalidate(k.as_str());
        }
        keys.len()
    }

    /// Entries and weighed size (approximate: moka applies writes lazily).
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Joins the flight for `key`: the first caller leads, later ones follow it.
    pub fn join(self: &Arc<Self>, key: &str) -> Flight {
        let mut flights = self.flights_lock();
        if let Some(f) = flights.get(key) {
            return Flight::Follower(f.clone());
        }
        let fetch = Arc::new(Fetch::default());
        flights.insert(key.to_string(), fetch.clone());
        Flight::Leader(FlightGuard {
            store: self.clone(),
            key: key.to_string(),
            fetch,
        })
    }
}
