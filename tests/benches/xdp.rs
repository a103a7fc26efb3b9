//! Per-packet cost of the `sinkhole` XDP program, through `BPF_PROG_TEST_RUN`, with 1,000,000
//! exact IPv4 blocks and 10,000 CIDR blocks loaded, beside xdp-tools' `xdp-filter` (10,000
//! source addresses, all its map holds) and an empty XDP program, each loaded three times,
//! every load attached to an interface and run the same way in the same process, on a passing
//! SYN, a dropped SYN and a passing ACK (a SYN leaves its fingerprint, an ACK does not). Needs
//! root, `xdp-filter` and `bpftool`. Prints a Markdown table.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::time::Instant;

use anyhow::{Context as _, bail};
use aya::Ebpf;
use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};
use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use sinkhole::kernel::Scope;
use sinkhole_tests::frames::Frame;
use sinkhole_tests::netns::NetNs;
use sinkhole_tests::run;
use sinkhole_tests::xdp::{TestProgram, XDP_DROP, XDP_PASS, load_program, sinkhole_program};

const EXACT: u32 = 1_000_000;
const CIDRS: u32 = 10_000;
/// What xdp-filter's `filter_ipv4` map holds.
const XDP_FILTER_ADDRESSES: u32 = 10_000;
const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 15;
/// Loads of each program, each measured in every round.
const INSTANCES: usize = 3;

/// The n-th blocked exact address: 10.0.0.0 upwards (map keys only, never a packet target).
fn exact(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + n)
}

/// The n-th blocked /24, spread over 100.64.0.0/10.
fn cidr(n: u32) -> IpNet {
    let net = 0x6440_0000 + ((n.wrapping_mul(7919) % 16384) << 8);
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(net), 24).expect("a /24"))
}

fn main() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("the XDP benchmark needs root (it loads BPF programs)");
    }
    let pass = Frame::tcp(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 25).bytes();
    // The passing segments that are no SYN (the connection's ACKs and data): no fingerprint.
    let pass_ack = Frame::tcp(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 25)
        .tcp_header(0x10, &[])
        .bytes();
    let drop = Frame::tcp(IpAddr::V4(exact(77)), 25).bytes();

    let started = Instant::now();
    let scope = Scope {
        all: false,
        smtp_ports: vec![25, 465, 587],
    };
    // The maps every load of the program below shares, pinned in a directory of the bench's.
    let mut sinkhole = TestProgram::load("b", &scope)?;
    sinkhole
        .maps
        .set_allow(&["127.0.0.0/8".parse()?, "::1/128".parse()?])?;
    for n in 0..EXACT {
        sinkhole
            .maps
            .insert(IpNet::from(IpAddr::V4(exact(n))), 0, "bench")?;
    }
    for n in 0..CIDRS {
        sinkhole.maps.insert(cidr(n), 0, "bench")?;
    }
    eprintln!(
        "loaded {EXACT} exact and {CIDRS} CIDR blocks in {:.1?}",
        started.elapsed()
    );

    // Every program is loaded INSTANCES times, each instance attached (generic XDP) to an
    // interface of its own in a namespace the bench creates. Attached, because the kernel
    // runs an attached program through a direct call in its XDP dispatcher and any other
    // through an indirect one, in a test run as on a real packet. Several times, because
    // where a program's code lands moves its cost by a few ns from one load to the next.
    let ns = NetNs::new("x")?;
    let ns_arg = format!("--net={}", ns.path().display());
    let mut interfaces = 0;
    let mut next_interface = || -> anyhow::Result<String> {
        interfaces += 1;
        let (name, peer) = (format!("xa{interfaces}"), format!("xb{interfaces}"));
        ns.ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer])?;
        ns.ip(&["link", "set", &name, "up"])?;
        Ok(name)
    };

    // Other builds of the program to measure beside it (`name=OBJECT,...`, see
    // docs/benchmarks.md), on the same maps.
    let variants = std::env::var("SINKHOLE_XDP_VARIANTS").unwrap_or_default();
    let variants = variants
        .split(',')
        .filter(|spec| !spec.is_empty())
        .map(|spec| -> anyhow::Result<(&str, Vec<u8>)> {
            let (name, path) = spec
                .split_once('=')
                .with_context(|| format!("SINKHOLE_XDP_VARIANTS: {spec:?} is not name=OBJECT"))?;
            // Named as read: cargo runs the bench in `tests/`, where a relative path starts.
            let object = std::fs::read(path).with_context(|| {
                let full = std::path::absolute(path).unwrap_or_else(|_| path.into());
                format!("SINKHOLE_XDP_VARIANTS: reading {}", full.display())
            })?;
            Ok((name, object))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The loads stay alive in `sinkhole_instances`; the measuring goes through their
    // descriptors.
    let mut sinkhole_instances = Vec::new();
    let mut load_instances = |object: Option<&[u8]>| -> anyhow::Result<Vec<OwnedFd>> {
        (0..INSTANCES)
            .map(|_| {
                let (instance, _maps) = load_program(sinkhole.pin_dir(), &scope, object)?;
                let fd = instance_fd(&instance)?;
                sinkhole_instances.push(instance);
                Ok(fd)
            })
            .collect()
    };
    let sinkhole_fds = load_instances(None)?;
    let variant_fds = variants
        .iter()
        .map(|(name, object)| Ok((*name, load_instances(Some(object))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut filter_fds = Vec::with_capacity(INSTANCES);
    let mut _unload = Vec::with_capacity(INSTANCES);
    for _ in 0..INSTANCES {
        let interface = next_interface()?;
        run(
            "nsenter",
            &[
                &ns_arg,
                "--",
                "xdp-filter",
                "load",
                &interface,
                "--mode",
                "skb",
            ],
        )?;
        filter_fds.push(xdp_filter_fd(&ns, &interface)?);
        _unload.push(XdpFilterUnload(ns_arg.clone(), interface));
    }
    let empty_fds = (0..INSTANCES)
        .map(|_| load_empty())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let variant_fds_flat = variant_fds.iter().flat_map(|(_, fds)| fds);
    for fd in sinkhole_fds
        .iter()
        .chain(&empty_fds)
        .chain(variant_fds_flat)
    {
        attach_generic(&ns_arg, &next_interface()?, fd.as_fd())?;
    }

    let mut programs: Vec<(&str, Vec<BorrowedFd<'_>>)> = vec![
        ("sinkhole", borrow(&sinkhole_fds)),
        ("xdp-filter", borrow(&filter_fds)),
        ("empty XDP", borrow(&empty_fds)),
    ];
    programs.extend(variant_fds.iter().map(|(name, fds)| (*name, borrow(fds))));
    for (name, fds) in &programs {
        for fd in fds {
            for (frame, want) in [(&pass, XDP_PASS), (&pass_ack, XDP_PASS), (&drop, XDP_DROP)] {
                let got = test_run(*fd, frame, 1)?.0;
                if name != &"empty XDP" && got != want {
                    bail!("{name} returned {got} instead of {want}");
                }
            }
        }
    }
    let frames = [&pass[..], &drop[..], &pass_ack[..]];
    let results: Vec<(&str, f64, f64, f64)> = interleaved_medians(&programs, &frames)?
        .into_iter()
        .zip(&programs)
        .map(|(ns, (name, _))| (*name, ns[0], ns[1], ns[2]))
        .collect();
    let (_, filter_pass, filter_drop, _) = results[1];
    let (_, empty_pass, empty_drop, _) = results[2];
    println!(
        "BPF_PROG_TEST_RUN (kernel-timed), median over {INSTANCES} loads x {ROUNDS} interleaved rounds of {REPEAT} repeats; sinkhole with {EXACT} exact + {CIDRS} CIDR blocks, xdp-filter with {XDP_FILTER_ADDRESSES} source addresses\n"
    );
    println!(
        "| program | pass ns/pkt | drop ns/pkt | pass vs xdp-filter | drop vs xdp-filter | pass above empty | drop above empty | pass, an ACK, ns/pkt |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, p, d, ack) in &results {
        println!(
            "| {name} | {p:.1} | {d:.1} | {:.2}x | {:.2}x | {:.1} | {:.1} | {ack:.1} |",
            p / filter_pass,
            d / filter_drop,
            p - empty_pass,
            d - empty_drop
        );
    }
    Ok(())
}

/// Unloads xdp-filter from an interface when the bench ends: it pins its maps under
/// /sys/fs/bpf/xdp-filter, which deleting the namespace would leave behind.
struct XdpFilterUnload(String, String);

impl Drop for XdpFilterUnload {
    fn drop(&mut self) {
        if let Err(e) = run("nsenter", &[&self.0, "--", "xdp-filter", "unload", &self.1]) {
            eprintln!("{e}");
        }
        let _ = std::fs::remove_dir("/sys/fs/bpf/xdp-filter");
    }
}

fn instance_fd(ebpf: &Ebpf) -> anyhow::Result<OwnedFd> {
    Ok(sinkhole_program(ebpf)?.fd()?.as_fd().try_clone_to_owned()?)
}

/// Loads the IPv4 filter list of the xdp-filter instance attached to `interface` of `ns` (the
/// instances share it: loading it again changes nothing), and returns its program.
fn xdp_filter_fd(ns: &NetNs, interface: &str) -> anyhow::Result<OwnedFd> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-j", "link", "show", interface])
        .output()?;
    let links: Value = serde_json::from_slice(&out.stdout)?;
    let id = links[0]["xdp"]["prog"]["id"]
        .as_u64()
        .context("xdp-filter's program id on the veth")?;
    let id = u32::try_from(id)?;
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .context("xdp-filter's program among the loaded ones")?;
    for map_id in info.map_ids()?.unwrap_or_default() {
        let data = MapData::from_id(map_id)?;
        if data.info()?.name_as_str() != Some("filter_ipv4") {
            continue;
        }
        let mut map: PerCpuHashMap<MapData, [u8; 4], u64> = Map::from_map_data(data)?.try_into()?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for n in 0..XDP_FILTER_ADDRESSES {
            // 1 = MAP_FLAG_SRC: match the source address.
            let values = PerCpuValues::try_from(vec![1u64; cpus])?;
            map.insert(exact(n).octets(), values, 0)?;
        }
    }
    Ok(info.fd()?.as_fd().try_clone_to_owned()?)
}

/// Attaches `prog` in generic (skb) mode to `interface` of the namespace `ns_arg` names
/// (`--net=PATH`); deleting the namespace detaches it.
fn attach_generic(ns_arg: &str, interface: &str, prog: BorrowedFd<'_>) -> anyhow::Result<()> {
    let id = program_id(prog)?.to_string();
    run(
        "nsenter",
        &[
            ns_arg,
            "--",
            "bpftool",
            "net",
            "attach",
            "xdpgeneric",
            "id",
            &id,
            "dev",
            interface,
        ],
    )?;
    Ok(())
}

// The raw BPF boundary: the empty program, its id and the test runs, with the kernel's `union
// bpf_attr` laid out by hand for the three commands used.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_XDP: u32 = 6;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-initialised 128-byte bpf_attr the kernel reads and writes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// `r0 = XDP_PASS; exit`.
fn load_empty() -> anyhow::Result<OwnedFd> {
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | (insns.len() as u64) << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("load the empty XDP program")?;
    // SAFETY: a fresh descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The kernel's id of a loaded program.
fn program_id(prog: BorrowedFd<'_>) -> anyhow::Result<u32> {
    // The head of `struct bpf_prog_info`: `type`, then `id`.
    let mut info = [0u32; 2];
    let mut attr = [0u64; 16];
    attr[0] = prog.as_raw_fd() as u64 | (std::mem::size_of_val(&info) as u64) << 32; // bpf_fd, info_len
    attr[1] = info.as_mut_ptr() as u64; // info
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(info[1])
}

fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|fd| fd.as_fd()).collect()
}

/// Runs `frame` through the program `repeat` times; the verdict and ns per run.
fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, u32)> {
    let mut attr = [0u64; 16];
    attr[0] = prog.as_raw_fd() as u64; // prog_fd, retval
    attr[1] = frame.len() as u64; // data_size_in, data_size_out
    attr[2] = frame.as_ptr() as u64; // data_in
    attr[4] = u64::from(repeat); // repeat, duration
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    Ok(((attr[0] >> 32) as u32, (attr[4] >> 32) as u32))
}

/// The median ns per run of every program on every frame. The rounds go through all
/// programs and frames in turn, so a change in machine load shifts all of them alike.
fn interleaved_medians(
    programs: &[(&str, Vec<BorrowedFd<'_>>)],
    frames: &[&[u8]],
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut samples =
        vec![vec![Vec::with_capacity(ROUNDS * INSTANCES); frames.len()]; programs.len()];
    for _ in 0..ROUNDS {
        for ((_, fds), per_frame) in programs.iter().zip(&mut samples) {
            for fd in fds {
                for (frame, runs) in frames.iter().zip(per_frame.iter_mut()) {
                    // The kernel's own figure (whole ns per run): it stops its timer while
                    // the loop yields the CPU, so time given to other tasks does not count,
                    // as it would in the wall time of the call.
                    runs.push(f64::from(test_run(*fd, frame, REPEAT)?.1));
                }
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|per_frame| {
            per_frame
                .into_iter()
                .map(|mut runs| {
                    runs.sort_by(f64::total_cmp);
                    runs[runs.len() / 2]
                })
                .collect()
        })
        .collect())
}
