//! A nanosecond clock from the TSC, calibrated once against the PIT.
//!
//! Calibration gates PIT channel 2 for a fixed count and counts TSC ticks
//! until its output goes high. Every loop is bounded: a PIT that never
//! fires (microvm has none) falls back to CPUID leaf 0x16, then to an
//! assumed rate far above any real one. Assuming too high a rate makes
//! timeouts last longer than asked, never shorter, so waits stay bounded
//! and nothing times out early; throughput figures are then marked as
//! estimates by [`Calibration::source`].

use super::port::{inb, outb};
use crate::sync::Global;
use core::fmt;

/// PIT input clock.
const PIT_HZ: u64 = 1_193_182;
/// The calibration window: 20 ms.
const PIT_TICKS: u16 = 23_864;
/// Polls of the PIT output before giving up (port reads cost 1–10 µs, so
/// this is far beyond the 20 ms window).
const MAX_POLLS: u32 = 5_000_000;
/// Assumed when nothing better is known: above any real TSC rate.
const FALLBACK_HZ: u64 = 10_000_000_000;

const PORT_GATE: u16 = 0x61;
const PORT_CH2: u16 = 0x42;
const PORT_MODE: u16 = 0x43;
/// Channel 2, low byte then high byte, mode 0 (interrupt on terminal count).
const MODE_CH2_ONESHOT: u8 = 0b1011_0000;
const GATE_CH2: u8 = 0x01;
const SPEAKER: u8 = 0x02;
const OUT_CH2: u8 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Measured against PIT channel 2.
    Pit,
    /// CPUID leaf 0x16 base frequency.
    Cpuid,
    /// Nothing answered: the rate is an upper bound, not a measurement.
    Assumed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calibration {
    pub hz: u64,
    pub source: Source,
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            Source::Pit => "pit",
            Source::Cpuid => "cpuid.16h",
            Source::Assumed => "assumed (no timer answered)",
        };
        write!(
            f,
            "tsc_mhz={}.{:03} source={source}",
            self.hz / 1_000_000,
            self.hz / 1_000 % 1_000
        )
    }
}

static CALIBRATION: Global<Option<Calibration>> = Global::new(None);

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The TSC rate, measured on first use.
pub fn calibration() -> Calibration {
    // SAFETY: one CPU, no interrupts; the value is written once, here.
    let slot = unsafe { &mut *CALIBRATION.get() };
    *slot.get_or_insert_with(calibrate)
}

/// Nanoseconds since an arbitrary point; monotonic.
pub fn now_ns() -> u64 {
    let hz = calibration().hz;
    (u128::from(rdtsc()) * 1_000_000_000 / u128::from(hz)) as u64
}

fn calibrate() -> Calibration {
    if let Some(hz) = pit() {
        return Calibration {
            hz,
            source: Source::Pit,
        };
    }
    let max = super::cpuid::cpuid(0, 0).eax;
    if max >= 0x16 {
        let mhz = u64::from(super::cpuid::cpuid(0x16, 0).eax & 0xffff);
        if mhz != 0 {
            return Calibration {
                hz: mhz * 1_000_000,
                source: Source::Cpuid,
            };
        }
    }
    Calibration {
        hz: FALLBACK_HZ,
        source: Source::Assumed,
    }
}

fn pit() -> Option<u64> {
    // SAFETY: port 0x61 bit 0 gates PIT channel 2 and bit 1 drives the
    // speaker (kept off); channel 2 feeds nothing else. The guest takes no
    // interrupts, so reprogramming it disturbs no one.
    unsafe {
        let gate = inb(PORT_GATE);
        if gate == 0xff {
            return None; // no port 0x61 at all
        }
        outb(PORT_GATE, (gate & !SPEAKER) & !GATE_CH2);
        outb(PORT_MODE, MODE_CH2_ONESHOT);
        outb(PORT_CH2, PIT_TICKS as u8);
        outb(PORT_CH2, (PIT_TICKS >> 8) as u8);
        // Counting starts on the rising gate.
        outb(PORT_GATE, (gate & !SPEAKER) | GATE_CH2);
        let start = rdtsc();
        let mut polls = 0;
        while inb(PORT_GATE) & OUT_CH2 == 0 {
            polls += 1;
            if polls >= MAX_POLLS {
                outb(PORT_GATE, gate);
                return None;
            }
        }
        let ticks = rdtsc().wrapping_sub(start);
        outb(PORT_GATE, gate);
        // Below 1 MHz the count is not a TSC rate worth trusting.
        let hz = ticks * PIT_HZ / u64::from(PIT_TICKS);
        (hz >= 1_000_000).then_some(hz)
    }
}
