//! The changes `sinkhole address close|open|block|unblock` and `auto_close` make to a
//! per-address file, made on its text (comments and layout kept) and checked by parsing the
//! result before it is written.

use std::time::SystemTime;

use toml_edit::{Array, DocumentMut, Item, Table, Value};

use super::address::{AddressFile, State, refusal_reply_line};
use super::pattern::{Glob, HostPattern, Mailbox, SenderPattern};

/// One entry of a `[block]` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockEntry {
    /// `block.hosts`: an address, a CIDR prefix or a reverse name.
    Host(String),
    /// `block.senders`: an address, `@domain`, `@.suffix`, a glob or `<>`.
    Sender(String),
    /// `block.helo`: a glob.
    Helo(String),
}

impl BlockEntry {
    /// The list's key in `[block]`.
    fn key(&self) -> &'static str {
        match self {
            BlockEntry::Host(_) => "hosts",
            BlockEntry::Sender(_) => "senders",
            BlockEntry::Helo(_) => "helo",
        }
    }

    /// The entry as the file writes it: checked, and in the canonical form its list compares.
    fn canonical(&self) -> Result<String, String> {
        match self {
            BlockEntry::Host(text) => text.parse::<HostPattern>().map(|p| p.to_string()),
            BlockEntry::Sender(text) => text.parse::<SenderPattern>().map(|p| p.to_string()),
            BlockEntry::Helo(text) => text.parse::<Glob>().map(|p| p.to_string()),
        }
    }
}

/// A change to one address's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Closes the address, with when and why, and the reply (`messages.closed`) if one is
    /// given: `state = "closed"` when the file lists it alone, else `[closed."ADDRESS"]`.
    Close {
        message: Option<String>,
        at: SystemTime,
        reason: String,
    },
    /// Opens the address: its `[closed."ADDRESS"]` goes; a file-wide `state = "closed"` is
    /// opened, its other addresses each staying closed with the file's when and why.
    Open,
    Block(BlockEntry),
    Unblock(BlockEntry),
}

/// Why an edit was not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("{0}")]
    Invalid(String),
    #[error("{file}: `{entry}` is not in block.{key}")]
    NotBlocked {
        file: String,
        key: &'static str,
        entry: String,
    },
    #[error("{0}")]
    Parse(String),
}

/// The text of a new file for `address`.
pub fn new_file(address: &Mailbox) -> String {
    format!(
        "# The rules of {address}: see `sinkhole address --help` and the policy documentation.\n\
         addresses = [\"{address}\"]\n"
    )
}

/// Applies `edit` to the text of the file `origin` (`None`: a new file for `address`); the
/// new text, which parses.
pub fn apply(
    text: Option<&str>,
    address: &Mailbox,
    edit: &Edit,
    origin: &str,
) -> Result<String, EditError> {
    let text = text.map_or_else(|| new_file(address), str::to_owned);
    let current = AddressFile::parse(&text, origin).map_err(|e| EditError::Parse(e.to_string()))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Parse(format!("{origin}: {e}")))?;
    let alone = current.addresses.len() <= 1;
    match edit {
        Edit::Close {
            message,
            at,
            reason,
        } => {
            if let Some(message) = message {
                let reply = refusal_reply_line(message).map_err(EditError::Invalid)?;
                let line = format!("{} {}", reply.code, reply.text);
                table(&mut doc, "messages")["closed"] = toml_edit::value(line);
            }
            let at = humantime::format_rfc3339_seconds(*at).to_string();
            if alone {
                doc["state"] = toml_edit::value("closed");
                doc["closed_at"] = toml_edit::value(at);
                doc["closed_reason"] = toml_edit::value(reason.as_str());
            } else {
                close_one(&mut doc, address, Some(&at), Some(reason));
            }
        }
        Edit::Open => {
            if let Some(closed) = doc.get_mut("closed").and_then(Item::as_table_like_mut) {
                closed.remove(address.as_str());
            }
            if current.state == State::Closed {
                doc["state"] = toml_edit::value("open");
                doc.remove("closed_at");
                doc.remove("closed_reason");
                let at = current
                    .closed_at
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string());
                for other in current.addresses.iter().filter(|a| *a != address) {
                    close_one(
                        &mut doc,
                        other,
                        at.as_deref(),
                        current.closed_reason.as_deref(),
                    );
                }
            }
        }
        Edit::Block(entry) => {
            let canonical = entry.canonical().map_err(EditError::Invalid)?;
            let list = array(table(&mut doc, "block"), entry.key())?;
            if !list.iter().any(|v| same(v, &canonical)) {
                list.push(canonical);
            }
        }
        Edit::Unblock(entry) => {
            let canonical = entry.canonical().map_err(EditError::Invalid)?;
            let list = array(table(&mut doc, "block"), entry.key())?;
            let before = list.len();
            list.retain(|v| !same(v, &canonical));
            if list.len() == before {
                return Err(EditError::NotBlocked {
                    file: origin.to_owned(),
                    key: entry.key(),
                    entry: canonical,
                });
            }
        }
    }
    let new = doc.to_string();
    AddressFile::parse(&new, origin).map_err(|e| EditError::Parse(e.to_string()))?;
    Ok(new)
}

/// `[closed."ADDRESS"]` with `at` and `reason`.
fn close_one(doc: &mut DocumentMut, address: &Mailbox, at: Option<&str>, reason: Option<&str>) {
    let closed = table(doc, "closed");
    if let Some(closed) = closed.as_table_mut() {
        // Only its sub-tables are written: `[closed."a@example.org"]`, no empty `[closed]`.
        closed.set_implicit(true);
    }
    let mut entry = Table::new();
    if let Some(at) = at {
        entry["at"] = toml_edit::value(at);
    }
    if let Some(reason) = reason {
        entry["reason"] = toml_edit::value(reason);
    }
    closed[address.as_str()] = Item::Table(entry);
}

/// Whether a list value is `canonical` (as its pattern would write it, so `@Bulk.example` and
/// `@bulk.example` are one entry).
fn same(value: &Value, canonical: &str) -> bool {
    value.as_str().is_some_and(|text| {
        text.trim().eq_ignore_ascii_case(canonical)
            || text
                .parse::<HostPattern>()
                .is_ok_and(|p| p.to_string() == canonical)
            || text
                .parse::<SenderPattern>()
                .is_ok_and(|p| p.to_string() == canonical)
    })
}

/// The table `key` of the document (inline or not), made if missing.
fn table<'a>(doc: &'a mut DocumentMut, key: &str) -> &'a mut Item {
    doc.entry(key).or_insert_with(|| Item::Table(Table::new()))
}

/// The array `key` of `table`, made if missing.
fn array<'a>(table: &'a mut Item, key: &str) -> Result<&'a mut Array, EditError> {
    let item = &mut table[key];
    if item.is_none() {
        *item = toml_edit::value(Array::new());
    }
    item.as_array_mut()
        .ok_or_else(|| EditError::Invalid(format!("`{key}` is not a list")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::address::State;

    fn chris() -> Mailbox {
        "chris@example.org".parse().unwrap()
    }

    #[test]
    fn a_new_file_is_made_and_closed_with_when_and_why() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_772_359_200);
        let close = Edit::Close {
            message: Some("Closed: it was spammed".into()),
            at,
            reason: "closed by chris".into(),
        };
        let text = apply(None, &chris(), &close, "chris.toml").unwrap();
        let file = AddressFile::parse(&text, "chris.toml").unwrap();
        assert_eq!(file.addresses, [chris()]);
        assert_eq!(file.state, State::Closed);
        assert_eq!(file.closed_at, Some(at));
        assert_eq!(file.closed_reason.as_deref(), Some("closed by chris"));
        assert_eq!(
            file.messages.closed.unwrap().text,
            "5.7.1 Closed: it was spammed"
        );
        assert!(
            text.contains("closed_at = \"2026-03-01T10:00:00Z\""),
            "{text}"
        );
        let open = apply(Some(&text), &chris(), &Edit::Open, "chris.toml").unwrap();
        let file = AddressFile::parse(&open, "chris.toml").unwrap();
        assert_eq!((file.state, file.closed_at), (State::Open, None));
        assert!(
            file.messages.closed.is_some(),
            "the message stays for next time"
        );
    }

    #[test]
    fn one_address_of_several_closes_alone_and_opening_one_keeps_the_others_closed() {
        let two = "addresses = [\"chris@example.org\", \"shop@example.org\"]\n";
        let shop: Mailbox = "shop@example.org".parse().unwrap();
        let close = Edit::Close {
            message: None,
            at: SystemTime::UNIX_EPOCH,
            reason: "spammed".into(),
        };
        let text = apply(Some(two), &shop, &close, "c.toml").unwrap();
        assert!(text.contains("[closed.\"shop@example.org\"]\nat = \"1970-01-01T00:00:00Z\"\nreason = \"spammed\"\n"), "{text}");
        let file = AddressFile::parse(&text, "c.toml").unwrap();
        assert_eq!(file.state, State::Open);
        assert!(file.closure(&shop).is_some() && file.closure(&chris()).is_none());
        let text = apply(Some(&text), &shop, &Edit::Open, "c.toml").unwrap();
        assert!(
            AddressFile::parse(&text, "c.toml")
                .unwrap()
                .closure(&shop)
                .is_none()
        );
        // The whole file closed by hand; opening one address keeps the other closed.
        let all = format!("{two}state = \"closed\"\nclosed_reason = \"by hand\"\n");
        let text = apply(Some(&all), &chris(), &Edit::Open, "c.toml").unwrap();
        let file = AddressFile::parse(&text, "c.toml").unwrap();
        assert_eq!(file.state, State::Open);
        assert!(file.closure(&chris()).is_none());
        assert_eq!(file.closure(&shop).unwrap().reason, Some("by hand"));
    }

    #[test]
    fn blocks_are_added_once_removed_and_comments_stay() {
        let text = "# Chris's own rules.\naddresses = [\"chris@example.org\"] # mine\n";
        let host = |h: &str| Edit::Block(BlockEntry::Host(h.into()));
        let text = apply(Some(text), &chris(), &host("203.0.113.0/24"), "c.toml").unwrap();
        let text = apply(Some(&text), &chris(), &host("203.0.113.0/24"), "c.toml").unwrap();
        let sender = Edit::Block(BlockEntry::Sender("@Bulk.Example".into()));
        let text = apply(Some(&text), &chris(), &sender, "c.toml").unwrap();
        assert!(
            text.starts_with("# Chris's own rules.\naddresses = [\"chris@example.org\"] # mine\n"),
            "{text}"
        );
        let file = AddressFile::parse(&text, "c.toml").unwrap();
        assert_eq!(file.block.hosts.len(), 1);
        assert_eq!(file.block.senders[0].to_string(), "@bulk.example");
        let unsender = Edit::Unblock(BlockEntry::Sender("@bulk.example".into()));
        let text = apply(Some(&text), &chris(), &unsender, "c.toml").unwrap();
        assert!(
            AddressFile::parse(&text, "c.toml")
                .unwrap()
                .block
                .senders
                .is_empty()
        );
        assert_eq!(
            apply(Some(&text), &chris(), &unsender, "c.toml")
                .unwrap_err()
                .to_string(),
            "c.toml: `@bulk.example` is not in block.senders"
        );
        let bad = Edit::Block(BlockEntry::Host("203.0.113.7/24".into()));
        assert!(matches!(
            apply(Some(&text), &chris(), &bad, "c.toml"),
            Err(EditError::Invalid(_))
        ));
        let broken = apply(Some("addresses = ["), &chris(), &Edit::Open, "c.toml").unwrap_err();
        assert!(broken.to_string().starts_with("c.toml:1: "), "{broken}");
    }
}
