import { Dialog, DialogPanel } from "@headlessui/react";
import { useEffect, useState } from "react";
import { Outlet, useNavigate } from "react-router";
import { CloseIcon, MenuIcon, PlusIcon } from "./icons";
import { InfoNotice } from "./Notice";
import { Sidebar } from "./Sidebar";

function useOnline(): boolean {
  const [online, setOnline] = useState(() => navigator.onLine);
  useEffect(() => {
    const up = () => setOnline(true);
    const down = () => setOnline(false);
    window.addEventListener("online", up);
    window.addEventListener("offline", down);
    return () => {
      window.removeEventListener("online", up);
      window.removeEventListener("offline", down);
    };
  }, []);
  return online;
}

export function Layout() {
  const [open, setOpen] = useState(false);
  const online = useOnline();
  const navigate = useNavigate();
  return (
    <div className="flex h-dvh overflow-hidden">
      <aside className="hidden w-72 shrink-0 border-r border-zinc-200 md:block dark:border-zinc-800">
        <Sidebar />
      </aside>
      <Dialog open={open} onClose={() => setOpen(false)} className="relative z-40 md:hidden">
        <div className="fixed inset-0 bg-black/40" aria-hidden="true" />
        <DialogPanel className="fixed inset-y-0 left-0 flex w-[85vw] max-w-xs flex-col shadow-xl">
          <button type="button" onClick={() => setOpen(false)} aria-label="Close menu" className="absolute -right-11 top-3 rounded-full bg-white/90 p-2 text-zinc-800">
            <CloseIcon />
          </button>
          <Sidebar onNavigate={() => setOpen(false)} />
        </DialogPanel>
      </Dialog>
      <div className="flex min-w-0 flex-1 flex-col">
        <header className="flex items-center justify-between border-b border-zinc-200 px-2 py-1.5 md:hidden dark:border-zinc-800">
          <button type="button" onClick={() => setOpen(true)} aria-label="Open menu" className="rounded-lg p-2 hover:bg-zinc-100 dark:hover:bg-zinc-800">
            <MenuIcon />
          </button>
          <span className="font-semibold">chatplane</span>
          <button type="button" onClick={() => navigate("/")} aria-label="New chat" className="rounded-lg p-2 hover:bg-zinc-100 dark:hover:bg-zinc-800">
            <PlusIcon />
          </button>
        </header>
        {!online && (
          <div className="px-3 pt-2">
            <InfoNotice>You are offline. Replies and changes will work again once the connection is back.</InfoNotice>
          </div>
        )}
        <main className="flex min-h-0 flex-1 flex-col">
          <Outlet />
        </main>
      </div>
    </div>
  );
}
