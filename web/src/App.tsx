import { lazy, Suspense } from "react";
import { createBrowserRouter, Navigate, Outlet, RouterProvider, useLocation } from "react-router";
import { Layout } from "./components/Layout";
import { ChatPage } from "./pages/ChatPage";
import { LoginPage } from "./pages/LoginPage";
import { NotFoundPage } from "./pages/NotFoundPage";
import { forgetAll } from "./state/chat";
import { resetList } from "./state/conversations";
import { models } from "./state/prefs";
import { session } from "./state/session";
import { useStore } from "./state/store";

// The pages few visits need: their own chunks, loaded when opened.
const KeysPage = lazy(() => import("./pages/KeysPage"));
const UsagePage = lazy(() => import("./pages/UsagePage"));

function RequireSession() {
  const s = useStore(session);
  const location = useLocation();
  if (!s) {
    const next = location.pathname + location.search;
    return <Navigate to={next === "/" ? "/login" : `/login?next=${encodeURIComponent(next)}`} replace />;
  }
  return <Outlet />;
}

function Loading() {
  return <p className="p-6 text-zinc-500" role="status">Loading…</p>;
}

const router = createBrowserRouter([
  { path: "/login", element: <LoginPage /> },
  { path: "/signup", element: <LoginPage /> }, // one page for both: "Log in" and "Sign up" side by side
  {
    element: <RequireSession />,
    children: [
      {
        element: <Layout />,
        children: [
          { index: true, element: <ChatPage /> },
          { path: "c/:id", element: <ChatPage /> },
          { path: "keys", element: <Suspense fallback={<Loading />}><KeysPage /></Suspense> },
          { path: "usage", element: <Suspense fallback={<Loading />}><UsagePage /></Suspense> },
          { path: "*", element: <NotFoundPage /> },
        ],
      },
    ],
  },
]);

// Another account (or none): nothing of the previous one stays in memory. Synchronous, before any page of the new
// session loads anything.
let lastUser: string | null | undefined;
session.subscribe(() => {
  const user = session.get()?.email ?? null;
  if (user === lastUser) return;
  lastUser = user;
  forgetAll();
  resetList();
  models.set((m) => ({ ...m, loaded: false, error: null })); // asked again with the new session's credentials
});

export function App() {
  return <RouterProvider router={router} />;
}
