//! Typed IPC for servers and their clients, so that neither packs message registers by
//! hand: a protocol is a request type ([`Request`]) and a reply type ([`Reply`]), each
//! encoded as a label, words and at most a few capabilities; [`call`] is the client
//! side, [`serve`] the server's receive loop.
//!
//! Conventions every protocol shares:
//! - A request's label says what it is; a request type decodes the labels it knows and
//!   answers every other with [`Error::UnknownLabel`].
//! - A reply's label is [`OK`] (0) for success, with the reply's words; any other label
//!   is an [`Error`] code ([`Error::code`]) and the reply has no words.
//! - A protocol has one reply type for all its requests. The runtime has `()` (no
//!   words), `u64` (one word), `Option<u64>` (one word or none) and [`Words`] (a list);
//!   anything else is a type of the protocol's own implementing [`Reply`].
//! - Text travels as words (`keel_servers::text_to_words`: length, then eight bytes a
//!   word), in the registers and the IPC buffer.
//!
//! A server implements [`Service`]: it gets decoded requests and returns an [`Answer`]:
//! a reply now, or [`Answer::Later`] when it saved the caller's reply capability to
//! answer later (or there is no caller: a notification bound to its thread, which
//! [`Service::notified`] receives).

use keel_sys::cap::{Cap, Endpoint};
use keel_sys::{Message, Received};

/// The label of a successful reply.
pub const OK: u64 = 0;

/// Why a request failed: the reply label of a refused request, or what the client found
/// wrong with a reply. One set for every server, so clients and the shell print the same
/// words for the same failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The server does not know the request's label.
    UnknownLabel,
    /// The request is malformed (a missing capability, a bad name, too many words).
    BadRequest,
    /// Nothing is registered under the name asked for.
    NotFound,
    /// The name is already someone else's.
    Exists,
    /// The server has no room left (names, slots).
    Full,
    /// The server cannot take another waiter now.
    Busy,
    /// An I/O port access was refused (the server lacks the port capability).
    PortRefused,
    /// The firmware or machine describes no way to do it.
    Unsupported,
    /// The request went through but had no effect (the machine is still running).
    StillRunning,
    /// The reply did not have the shape the protocol says (client side).
    BadReply,
    /// A reply label this runtime does not know.
    Other(u64),
}

impl Error {
    /// The reply label that carries this error (never [`OK`]).
    pub fn code(self) -> u64 {
        match self {
            Self::UnknownLabel => 1,
            Self::BadRequest => 2,
            Self::NotFound => 3,
            Self::Exists => 4,
            Self::Full => 5,
            Self::Busy => 6,
            Self::PortRefused => 7,
            Self::Unsupported => 8,
            Self::StillRunning => 9,
            Self::BadReply => 10,
            Self::Other(code) => code,
        }
    }

    /// The error a reply label names (`label` ≠ [`OK`]).
    pub fn from_code(label: u64) -> Self {
        match label {
            1 => Self::UnknownLabel,
            2 => Self::BadRequest,
            3 => Self::NotFound,
            4 => Self::Exists,
            5 => Self::Full,
            6 => Self::Busy,
            7 => Self::PortRefused,
            8 => Self::Unsupported,
            9 => Self::StillRunning,
            10 => Self::BadReply,
            other => Self::Other(other),
        }
    }
}

/// A request message of a protocol.
pub trait Request: Sized {
    /// What a successful request gets back.
    type Reply: Reply;

    /// The message to send.
    fn encode(&self) -> Message;

    /// The request in a received message: [`Error::UnknownLabel`] for a label the
    /// protocol does not have, [`Error::BadRequest`] for a malformed one. Words 4 and up
    /// are in the IPC buffer: decode before the next system call.
    fn decode(message: &Received) -> Result<Self, Error>;
}

/// A successful reply of a protocol (label [`OK`]).
pub trait Reply: Sized {
    /// The reply's words and capabilities, with label [`OK`].
    fn encode(&self) -> Message;

    /// The reply in a received message whose label is [`OK`] ([`Error::BadReply`] if
    /// its shape is wrong).
    fn decode(message: &Received) -> Result<Self, Error>;
}

/// The empty reply: label [`OK`], no words.
impl Reply for () {
    fn encode(&self) -> Message {
        Message::new(OK)
    }

    fn decode(_: &Received) -> Result<Self, Error> {
        Ok(())
    }
}

/// A reply of one word: label [`OK`] and the word ([`Error::BadReply`] if there is
/// none).
impl Reply for u64 {
    fn encode(&self) -> Message {
        Message::new(OK).word(*self)
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        match message.length() {
            0 => Err(Error::BadReply),
            _ => Ok(message.mr(0)),
        }
    }
}

/// A reply of one word or none: label [`OK`] and the word for `Some`, no words for
/// `None` (a lookup that may find nothing).
impl Reply for Option<u64> {
    fn encode(&self) -> Message {
        match *self {
            Some(word) => Message::new(OK).word(word),
            None => Message::new(OK),
        }
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        Ok((message.length() > 0).then(|| message.mr(0)))
    }
}

/// The message that answers a request with `result`.
pub fn reply_message<P: Reply>(result: &Result<P, Error>) -> Message {
    match result {
        Ok(reply) => reply.encode(),
        Err(error) => Message::new(error.code()),
    }
}

/// The result a received reply carries.
pub fn decode_reply<P: Reply>(reply: &Received) -> Result<P, Error> {
    match reply.label() {
        OK => P::decode(reply),
        code => Err(Error::from_code(code)),
    }
}

/// Client side: Calls `server` with `request` and decodes the reply.
pub fn call<R: Request>(server: Cap<Endpoint>, request: &R) -> Result<R::Reply, Error> {
    decode_reply(&server.call(&request.encode()))
}

/// What a server does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<P> {
    /// Reply now with this result.
    Now(Result<P, Error>),
    /// No reply now: the server saved the caller's reply capability and answers it
    /// later (or there was no caller).
    Later,
}

impl<P> From<Result<P, Error>> for Answer<P> {
    fn from(result: Result<P, Error>) -> Self {
        Self::Now(result)
    }
}

/// The reply type of a service's protocol.
pub type ReplyOf<S> = <<S as Service>::Request as Request>::Reply;

/// A server: what [`serve`] calls for each message.
pub trait Service {
    /// The requests it answers.
    type Request: Request;

    /// Badge bits of the notifications bound to the server's thread (IRQs): a message
    /// whose badge has one of them goes to [`Service::notified`], not to
    /// [`Service::handle`]. Client badges must stay clear of them. 0: none.
    const NOTIFICATION_BADGE: u64 = 0;

    /// Answers one request; `badge` tells the clients apart.
    fn handle(&mut self, request: Self::Request, badge: u64) -> Answer<ReplyOf<Self>>;

    /// A bound notification arrived with `badge`.
    fn notified(&mut self, badge: u64) {
        let _ = badge;
    }

    /// Runs before every wait for the next message (e.g. to set the receive slot).
    fn before_wait(&mut self) {}

    /// Runs once a reply is out (after the Call that follows it has arrived): e.g. to
    /// delete a capability the reply carried a copy of.
    fn replied(&mut self) {}
}

/// The server's loop on `endpoint`: Recv, decode, [`Service::handle`], then ReplyRecv
/// with the answer (or Recv when the answer comes later). Requests that do not decode
/// are answered with the decoding error. Never returns.
pub fn serve<S: Service>(endpoint: Cap<Endpoint>, service: &mut S) -> ! {
    service.before_wait();
    let mut message = endpoint.recv();
    loop {
        let answer = if S::NOTIFICATION_BADGE & message.badge != 0 {
            service.notified(message.badge);
            Answer::Later
        } else {
            match S::Request::decode(&message) {
                Ok(request) => service.handle(request, message.badge),
                Err(error) => Answer::Now(Err(error)),
            }
        };
        service.before_wait();
        message = match answer {
            Answer::Now(result) => {
                let message = endpoint.reply_recv(&reply_message(&result));
                service.replied();
                message
            }
            Answer::Later => endpoint.recv(),
        };
    }
}

/// Up to `N` message words: the payload of requests and replies that carry a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Words<const N: usize> {
    words: [u64; N],
    len: usize,
}

impl<const N: usize> Words<N> {
    /// The first `N` of `words`.
    pub fn new(words: &[u64]) -> Self {
        let len = words.len().min(N);
        let mut all = [0; N];
        all[..len].copy_from_slice(&words[..len]);
        Self { words: all, len }
    }

    /// The words of a received message (at most `N`).
    pub fn from_message(message: &Received) -> Self {
        let len = message.length().min(N);
        let mut all = [0; N];
        for (i, word) in all[..len].iter_mut().enumerate() {
            *word = message.mr(i);
        }
        Self { words: all, len }
    }

    /// The words.
    pub fn as_slice(&self) -> &[u64] {
        &self.words[..self.len]
    }

    /// A message with `label` and these words.
    pub fn to_message(&self, label: u64) -> Message {
        Message::new(label).words(self.as_slice())
    }
}

/// A reply that is a list of words: label [`OK`] and the words.
impl<const N: usize> Reply for Words<N> {
    fn encode(&self) -> Message {
        self.to_message(OK)
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        Ok(Self::from_message(message))
    }
}
