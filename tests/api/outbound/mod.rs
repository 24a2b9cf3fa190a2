//! The relay's own requests to Ocean (`src/ocean/`, `src/outgoing/`), against a stand-in Ocean
//! on loopback: status updates (the messages field by field, every action Ocean's own clients
//! take, tokens, retries, ordering, dead
//! letters, what a clinic may send) and the documents fetched for each version. The relay and
//! the calls these tests share are in `support::flow`.

mod actions;
mod dead_letters;
mod delivery;
mod documents;
mod rules;
