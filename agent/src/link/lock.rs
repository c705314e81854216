//! The link as the engine's [`SlotLock`].

use super::{Link, LinkError};
use crate::deploy::{Grant, SlotLock, SlotRequest, SlotView, StepSlot, StepUpdate};
use crate::journal::{Phase, WriteId};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;

impl SlotLock for Link {
    fn acquire(&self, req: SlotRequest, write: WriteId) -> BoxFuture<'_, Result<Grant, LinkError>> {
        async move { Link::acquire(self, &req, write).await }.boxed()
    }

    fn release(&self, token: u64) -> BoxFuture<'_, Result<(), LinkError>> {
        Link::release(self, token).boxed()
    }

    fn report_phase(&self, token: u64, phase: Phase) -> BoxFuture<'_, Result<(), LinkError>> {
        Link::report_phase(self, token, phase).boxed()
    }

    fn claim(&self, token: u64) {
        Link::claim(self, token)
    }

    fn unclaim(&self, token: u64) {
        Link::unclaim(self, token)
    }

    fn adopt(&self, token: u64) -> bool {
        Link::adopt(self, token)
    }

    fn slot(&self) -> watch::Receiver<SlotView> {
        Link::subscribe_slot(self)
    }

    fn report_step(&self, update: StepUpdate) -> BoxFuture<'_, Result<StepSlot, LinkError>> {
        Link::report_step(self, update).boxed()
    }
}
