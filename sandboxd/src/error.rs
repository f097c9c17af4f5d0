//! The daemon's errors, and their one mapping to gRPC status codes.

use tonic::{Code, Status};

/// Every failure a CRI call can end in. Messages name the object and the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: `field` of `object` is wrong.
    #[error("invalid {field} of {object}: {problem}")]
    InvalidArgument {
        object: String,
        field: String,
        problem: String,
    },
    /// A request's document is malformed; the message names where (parse errors carry
    /// the document and the field).
    #[error("{0}")]
    InvalidDocument(String),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// An image name the local store does not hold; says how to get it there.
    #[error("image {0} is not in the local store, and sandboxd pulls from no registry: import it with `sandboxctl image import <oci-layout-dir|archive.tar> --name {0}` (examples/build-images.sh builds the demo images)")]
    ImageNotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// An operation ran past the deadline the caller gave it.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The object exists but is in the wrong state for the verb.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A step of an operation failed: "{step} for pod sandbox 3f2a…: …".
    #[error("{step} for {object}: {source}")]
    Step {
        step: &'static str,
        object: String,
        #[source]
        source: anyhow::Error,
    },
    /// The cluster store failed or cannot be reached.
    #[error(transparent)]
    Store(#[from] crate::cluster::store::StoreError),
    /// An operation failed and undoing its finished steps failed too.
    #[error("{failure}; rolling back also failed: {}", .undo.join("; "))]
    RollbackFailed {
        failure: Box<Error>,
        undo: Vec<String>,
    },
}

impl Error {
    pub fn invalid(
        object: impl Into<String>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Error::InvalidArgument {
            object: object.into(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub fn step(
        step: &'static str,
        object: impl Into<String>,
        source: impl Into<anyhow::Error>,
    ) -> Self {
        Error::Step {
            step,
            object: object.into(),
            source: source.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } | Error::InvalidDocument(_) => Code::InvalidArgument,
            Error::NotFound { .. } | Error::ImageNotFound(_) => Code::NotFound,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Step { .. } => Code::Internal,
            Error::Store(crate::cluster::store::StoreError::Unavailable { .. }) => {
                Code::Unavailable
            }
            Error::Store(_) => Code::Internal,
            Error::RollbackFailed { failure, .. } => failure.code(),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        // The chain of causes belongs in the message: CRI clients only show the message.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Status::new(e.code(), message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
