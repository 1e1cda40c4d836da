use aya::{EbpfLoader, programs::Xdp};
use balancer::dataplane::objects;
use balancer_tests::{
    bench::{pin_to_cpu, time},
    pkt::Flow,
};
fn main() -> anyhow::Result<()> {
    pin_to_cpu(1)?;
    let input = Flow::tcp("192.0.2.10", 1, "10.100.0.1", 80)
        .payload(80)
        .frame();
    for size in [1u32 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22] {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("LRU_SHARED", size)
            .map_max_entries("LRU_PERCPU", size)
            .load(objects::BENCH)?;
        for name in ["bench_lru_shared", "bench_lru_percpu"] {
            let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into()?;
            p.load()?;
        }
        let mut line = format!("size {size:>8}:");
        for name in ["bench_lru_shared", "bench_lru_percpu"] {
            let p: &Xdp = ebpf.program(name).unwrap().try_into()?;
            // fill phase then steady
            let t1 = time(p, &input, size / 4)?;
            let t2 = time(p, &input, 2_000_000)?;
            line += &format!(
                "  {name}: fill {:.0} steady {:.0}",
                t1.kernel_ns, t2.kernel_ns
            );
        }
        println!("{line}");
    }
    Ok(())
}
