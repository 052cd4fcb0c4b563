//! Rows as both databases return them, read into records once: the column
//! order of each query is the one these readers expect.

use super::{Account, FileRecord, HistoryPage, Page, UploadRecord};
use crate::protocol::{FileInfo, Message, Timestamp, User, UserKind};

/// A row's columns by position, for SQLite and PostgreSQL alike.
pub(super) trait Columns {
    type Error;
    fn text(&self, column: usize) -> Result<String, Self::Error>;
    fn optional_text(&self, column: usize) -> Result<Option<String>, Self::Error>;
    fn integer(&self, column: usize) -> Result<i64, Self::Error>;
    fn optional_integer(&self, column: usize) -> Result<Option<i64>, Self::Error>;
    /// The error for a value that is stored but makes no sense.
    fn corrupt(column: usize, detail: String) -> Self::Error;
}

impl Columns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, column: usize) -> rusqlite::Result<String> {
        self.get(column)
    }
    fn optional_text(&self, column: usize) -> rusqlite::Result<Option<String>> {
        self.get(column)
    }
    fn integer(&self, column: usize) -> rusqlite::Result<i64> {
        self.get(column)
    }
    fn optional_integer(&self, column: usize) -> rusqlite::Result<Option<i64>> {
        self.get(column)
    }
    fn corrupt(column: usize, detail: String) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            Box::new(std::io::Error::other(detail)),
        )
    }
}

impl Columns for tokio_postgres::Row {
    type Error = super::StoreError;
    fn text(&self, column: usize) -> Result<String, Self::Error> {
        Ok(self.try_get(column)?)
    }
    fn optional_text(&self, column: usize) -> Result<Option<String>, Self::Error> {
        Ok(self.try_get(column)?)
    }
    fn integer(&self, column: usize) -> Result<i64, Self::Error> {
        Ok(self.try_get(column)?)
    }
    fn optional_integer(&self, column: usize) -> Result<Option<i64>, Self::Error> {
        Ok(self.try_get(column)?)
    }
    fn corrupt(column: usize, detail: String) -> Self::Error {
        super::StoreError::Corrupt(format!("column {column}: {detail}"))
    }
}

fn kind<R: Columns + ?Sized>(row: &R, column: usize) -> Result<UserKind, R::Error> {
    let kind = row.text(column)?;
    UserKind::parse(&kind).ok_or_else(|| R::corrupt(column, format!("unknown kind {kind}")))
}

/// A size as SQL stores it (sizes are far below 2^63).
pub(super) fn size_column(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

fn size<R: Columns + ?Sized>(row: &R, column: usize) -> Result<u64, R::Error> {
    Ok(row.integer(column)?.max(0) as u64)
}

/// A row of `message_columns!()`.
pub(super) fn message<R: Columns + ?Sized>(row: &R) -> Result<Message, R::Error> {
    let attachment = row
        .optional_text(9)?
        .map(|text| serde_json::from_str::<FileInfo>(&text))
        .transpose()
        .map_err(|err| R::corrupt(9, err.to_string()))?;
    Ok(Message {
        id: row.integer(0)?,
        room: row.text(1)?.into(),
        user: User {
            id: row.text(2)?.into(),
            username: row.text(3)?.into(),
            kind: kind(row, 4)?,
        },
        content: row.text(5)?,
        created_at: Timestamp(row.integer(6)?),
        client_msg_id: row.optional_text(7)?,
        reply_to: row.optional_integer(8)?,
        attachment,
    })
}

/// A row of `id, username, password_hash, role, created_at` of `users`.
pub(super) fn account<R: Columns + ?Sized>(row: &R) -> Result<Account, R::Error> {
    Ok(Account {
        id: row.text(0)?,
        username: row.text(1)?,
        password_hash: row.text(2)?,
        role: row.text(3)?,
        created_at: Timestamp(row.integer(4)?),
    })
}

/// A row of `id, file_id, token_hash, room, user_id, username, user_kind,
/// filename, size, content_type, expires_at` of `uploads`.
pub(super) fn upload<R: Columns + ?Sized>(row: &R) -> Result<UploadRecord, R::Error> {
    Ok(UploadRecord {
        id: row.text(0)?,
        file_id: row.text(1)?,
        token_hash: row.text(2)?,
        room: row.text(3)?.into(),
        user: User {
            id: row.text(4)?.into(),
            username: row.text(5)?.into(),
            kind: kind(row, 6)?,
        },
        filename: row.text(7)?,
        size: size(row, 8)?,
        content_type: row.text(9)?,
        expires_at: Timestamp(row.integer(10)?),
    })
}

/// A row of `id, room, user_id, name, size, content_type, sha256,
/// created_at` of `files`.
pub(super) fn file<R: Columns + ?Sized>(row: &R) -> Result<FileRecord, R::Error> {
    Ok(FileRecord {
        id: row.text(0)?,
        room: row.text(1)?.into(),
        user_id: row.text(2)?.into(),
        name: row.text(3)?,
        size: size(row, 4)?,
        content_type: row.text(5)?,
        sha256: row.text(6)?,
        created_at: Timestamp(row.integer(7)?),
    })
}

/// A history page from the rows a page query returned: `limit + 1` were
/// asked for, so one more says there are more; newest-first pages are
/// turned oldest-first.
pub(super) fn page(mut messages: Vec<Message>, page: Page, limit: usize) -> HistoryPage {
    let has_more = messages.len() > limit;
    messages.truncate(limit);
    if !matches!(page, Page::After(_)) {
        messages.reverse();
    }
    HistoryPage { messages, has_more }
}
