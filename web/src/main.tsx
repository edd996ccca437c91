import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import { restore } from "./state/session";
import "./index.css";

restore();
createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
