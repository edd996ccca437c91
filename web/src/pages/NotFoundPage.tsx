import { Link } from "react-router";

export function NotFoundPage() {
  return (
    <div className="m-auto p-6 text-center">
      <h1 className="text-xl font-semibold">Page not found</h1>
      <p className="mt-2 text-zinc-500">
        There is nothing at this address. <Link to="/" className="text-teal-700 underline dark:text-teal-400">Start a new chat</Link>.
      </p>
    </div>
  );
}
