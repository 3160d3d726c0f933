//! `palisade registry`: the signed plugin registry, from the registry
//! owner's, the publisher's and the appliance's side.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::admin::RegistrySource;
use crate::registry::bundle::{self, Bundle};
use crate::registry::{Trusted, publish, trust_root};

/// How long what the owner signs stays valid.
#[derive(Debug, clap::Args)]
pub struct Lifetimes {
    /// Days until the root and targets metadata expire (signed with the
    /// offline keys).
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Days until the snapshot expires: refresh at least this often.
    #[arg(long, default_value_t = publish::SNAPSHOT_DAYS)]
    snapshot_days: u32,
    /// Days until the timestamp expires: how long a mirror may serve a
    /// frozen registry. Refresh it daily (`refresh --timestamp`).
    #[arg(long, default_value_t = publish::TIMESTAMP_DAYS)]
    timestamp_days: u32,
}

impl From<&Lifetimes> for publish::Lifetimes {
    fn from(l: &Lifetimes) -> Self {
        publish::Lifetimes {
            days: l.days,
            snapshot_days: l.snapshot_days,
            timestamp_days: l.timestamp_days,
        }
    }
}

/// `palisade registry` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Owner: create an empty registry in DIR, with new owner keys.
    Init {
        /// The registry directory (served as is, or copied to a stick).
        dir: PathBuf,
        /// Where the owner's keys are kept (offline).
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        lifetimes: Lifetimes,
    },
    /// Publisher: create a signing key and a card to send the registry
    /// owner.
    Keygen {
        /// The publisher's name (its role in the registry).
        publisher: String,
        /// The new private key (PEM, mode 0600).
        #[arg(long)]
        key: PathBuf,
        /// The card: name, public key, first signed role.
        #[arg(long)]
        card: PathBuf,
        /// Days until the publisher's role expires.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Owner: let the publisher of CARD sign plugins whose names match the
    /// patterns (`acme-*`), and nothing else.
    Delegate {
        /// The registry directory.
        dir: PathBuf,
        /// The owner's keys.
        #[arg(long)]
        keys: PathBuf,
        /// The publisher's card.
        #[arg(long)]
        card: PathBuf,
        /// Plugin name patterns.
        #[arg(long = "names", required = true, num_args = 1..)]
        names: Vec<String>,
        #[command(flatten)]
        lifetimes: Lifetimes,
    },
    /// Publisher: make a bundle of a built component and its
    /// palisade-plugin.toml, with its hashes and the SBOM of Cargo.lock.
    Package {
        /// The plugin crate's palisade-plugin.toml.
        #[arg(long, default_value = bundle::MANIFEST_SOURCE)]
        manifest: PathBuf,
        /// The built component (.wasm).
        #[arg(long)]
        component: PathBuf,
        /// The Cargo.lock the component was built with.
        #[arg(long)]
        lock: Option<PathBuf>,
        /// The bundle directory to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Publisher: sign a bundle into an outbox for the registry owner.
    Publish {
        /// The bundle directory.
        bundle: PathBuf,
        /// The registry (a directory or an http(s):// URL).
        #[arg(long)]
        registry: String,
        /// The registry's root.json the publisher trusts.
        #[arg(long)]
        root: PathBuf,
        /// The publisher's name.
        #[arg(long)]
        publisher: String,
        /// The publisher's key.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed role and the bundle's files.
        #[arg(long)]
        outbox: PathBuf,
        /// Days until the publisher's role expires.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Owner: accept a publisher's outbox into the registry, checking its
    /// signature and that it names only what was delegated.
    Accept {
        /// The outbox.
        outbox: PathBuf,
        /// The registry directory.
        #[arg(long)]
        registry: PathBuf,
        /// The owner's keys.
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        lifetimes: Lifetimes,
    },
    /// Owner: re-sign the metadata with fresh expiries: all of it but the
    /// root with the four owner keys, or only the timestamp (daily, from a
    /// timer, with the timestamp key alone) or the snapshot and timestamp
    /// (weekly, with those two keys).
    Refresh {
        /// The registry directory.
        dir: PathBuf,
        /// The owner's keys; only timestamp.pem with --timestamp, only
        /// snapshot.pem and timestamp.pem with --snapshot.
        #[arg(long)]
        keys: PathBuf,
        /// Re-sign the timestamp only, with timestamp.pem alone.
        #[arg(long, conflicts_with = "snapshot")]
        timestamp: bool,
        /// Re-sign the snapshot and the timestamp only, with snapshot.pem
        /// and timestamp.pem alone.
        #[arg(long)]
        snapshot: bool,
        #[command(flatten)]
        lifetimes: Lifetimes,
    },
    /// Owner: replace the root key; the new root is signed by the old key
    /// too, so appliances follow.
    RotateRoot {
        /// The registry directory.
        dir: PathBuf,
        /// The owner's keys.
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        lifetimes: Lifetimes,
    },
    /// Appliance: trust the registry whose root is ROOT, found at LOCATION.
    Trust {
        /// The registry's root.json, obtained out of band.
        root: PathBuf,
        /// The registry: a directory or an http(s):// URL.
        #[arg(long)]
        registry: String,
        /// CA certificates for an https:// registry.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Trust ROOT even when it is older than the root this appliance
        /// trusts (a lower version: the registry rotated its root since).
        /// Dangerous: it forgets what the appliance saw of the registry,
        /// so a registry or mirror may again serve anything ROOT's keys
        /// sign. Only to start over, for example with another registry,
        /// or from a trusted root that is damaged (cannot be read or
        /// parsed).
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn run(data: &Path, command: &Command) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        Command::Init {
            dir,
            keys,
            lifetimes,
        } => {
            rt.block_on(publish::init(dir, keys, &lifetimes.into()))?;
            println!(
                "registry created in {}; its root of trust is {}",
                dir.display(),
                dir.join("metadata/root.json").display()
            );
        }
        Command::Keygen {
            publisher,
            key,
            card,
            days,
        } => {
            let made = rt.block_on(publish::keygen(publisher, key, card, *days))?;
            println!(
                "key {} (id {}); send {} to the registry owner",
                key.display(),
                publish::card_key_id(&made)?,
                card.display()
            );
        }
        Command::Delegate {
            dir,
            keys,
            card,
            names,
            lifetimes,
        } => {
            rt.block_on(publish::delegate(dir, keys, card, names, &lifetimes.into()))?;
            println!(
                "delegated {} to the publisher of {}",
                names.join(" "),
                card.display()
            );
        }
        Command::Package {
            manifest,
            component,
            lock,
            out,
        } => {
            let bundle = bundle::package(manifest, component, lock.as_deref())?;
            bundle.write(out)?;
            println!("bundle {} in {}", bundle.id(), out.display());
        }
        Command::Publish {
            bundle,
            registry,
            root,
            publisher,
            key,
            outbox,
            days,
        } => {
            let bundle = Bundle::read(bundle)?;
            let url = publish::location(registry)?;
            let names = rt.block_on(publish::publish(
                &url, root, publisher, key, &bundle, outbox, *days,
            ))?;
            for name in names {
                println!("signed {name}");
            }
            println!(
                "outbox {} ready for the registry owner (palisade registry accept)",
                outbox.display()
            );
        }
        Command::Accept {
            outbox,
            registry,
            keys,
            lifetimes,
        } => {
            rt.block_on(publish::accept(registry, keys, outbox, &lifetimes.into()))?;
            println!("accepted {} into {}", outbox.display(), registry.display());
        }
        Command::Refresh {
            dir,
            keys,
            timestamp,
            snapshot,
            lifetimes,
        } => {
            if *timestamp {
                let until = rt.block_on(publish::refresh_timestamp(
                    dir,
                    keys,
                    lifetimes.timestamp_days,
                ))?;
                println!(
                    "re-signed the timestamp of {}; its snapshot expires at {until}",
                    dir.display()
                );
            } else if *snapshot {
                let until = rt.block_on(publish::refresh_snapshot(dir, keys, &lifetimes.into()))?;
                println!(
                    "re-signed the snapshot and timestamp of {}; its targets expire at {until}",
                    dir.display()
                );
            } else {
                rt.block_on(publish::refresh(dir, keys, &lifetimes.into()))?;
                println!("re-signed {}", dir.display());
            }
        }
        Command::RotateRoot {
            dir,
            keys,
            lifetimes,
        } => {
            let id = rt.block_on(publish::rotate_root(dir, keys, &lifetimes.into()))?;
            println!("new root key {id}; appliances follow on their next fetch");
        }
        Command::Trust {
            root,
            registry,
            ca_file,
            force,
        } => {
            crate::store::create_data_dir(data)?;
            let text = bundle::read_capped(root, 1 << 20)?;
            let trusted = trust_root(data, &text, *force)
                .with_context(|| format!("trusting {}", root.display()))?;
            // A directory is recorded absolute: the appliance runs from
            // anywhere.
            let location = publish::location(registry)?;
            let location = match location.scheme() {
                "file" => location
                    .to_file_path()
                    .map_or_else(|()| registry.clone(), |p| p.display().to_string()),
                _ => registry.clone(),
            };
            RegistrySource {
                location,
                ca_file: ca_file.clone(),
            }
            .write(data)?;
            match trusted {
                Trusted::Kept => println!("trusting the registry at {registry}, as before"),
                Trusted::New => println!("trusting the registry at {registry}"),
                Trusted::Replaced(why) => println!(
                    "the trusted registry root {} was damaged ({why}): replaced by {}; \
                     trusting the registry at {registry}, starting over",
                    crate::registry::trusted_root(data).display(),
                    root.display()
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
