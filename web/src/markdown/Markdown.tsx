// Markdown as React elements, from marked's tokens: no HTML string is ever put into the page (raw HTML in a reply
// shows as text), links only to http(s) and mailto. Code blocks are highlighted by a chunk loaded on first use.

import { Lexer, type Token, type Tokens } from "marked";
import { memo, useMemo, type ReactNode } from "react";
import { CodeBlock } from "./CodeBlock";

const SAFE_LINK = /^(https?:|mailto:)/i;

function inline(tokens: Token[] | undefined, key = ""): ReactNode[] {
  return (tokens ?? []).map((t, i) => inlineToken(t, `${key}${i}`));
}

function inlineToken(t: Token, key: string): ReactNode {
  switch (t.type) {
    case "strong":
      return <strong key={key}>{inline((t as Tokens.Strong).tokens, key)}</strong>;
    case "em":
      return <em key={key}>{inline((t as Tokens.Em).tokens, key)}</em>;
    case "del":
      return <del key={key}>{inline((t as Tokens.Del).tokens, key)}</del>;
    case "codespan":
      return (
        <code key={key} className="rounded bg-zinc-200/70 px-1 py-0.5 text-[0.9em] dark:bg-zinc-700/70">
          {(t as Tokens.Codespan).text}
        </code>
      );
    case "br":
      return <br key={key} />;
    case "link": {
      const link = t as Tokens.Link;
      if (!SAFE_LINK.test(link.href)) return <span key={key}>{inline(link.tokens, key)}</span>;
      return (
        <a key={key} href={link.href} target="_blank" rel="noopener noreferrer nofollow"
           className="text-teal-700 underline dark:text-teal-400">
          {inline(link.tokens, key)}
        </a>
      );
    }
    case "image": {
      const img = t as Tokens.Image;
      return <span key={key}>[{img.text || "image"}]</span>; // no remote images: the CSP would block them anyway
    }
    case "text": {
      const text = t as Tokens.Text;
      return text.tokens ? <span key={key}>{inline(text.tokens, key)}</span> : text.text;
    }
    case "escape":
    case "html":
    default:
      return "text" in t && typeof t.text === "string" ? t.text : t.raw;
  }
}

function block(t: Token, key: string): ReactNode {
  switch (t.type) {
    case "space":
    case "def":
      return null;
    case "paragraph":
      return <p key={key}>{inline((t as Tokens.Paragraph).tokens, key)}</p>;
    case "heading": {
      const h = t as Tokens.Heading;
      const Tag = (`h${Math.min(6, Math.max(3, h.depth + 2))}`) as "h3" | "h4" | "h5" | "h6";
      return <Tag key={key} className="font-semibold">{inline(h.tokens, key)}</Tag>;
    }
    case "code": {
      const c = t as Tokens.Code;
      return <CodeBlock key={key} code={c.text} lang={(c.lang ?? "").split(/\s/)[0]} />;
    }
    case "blockquote":
      return (
        <blockquote key={key} className="border-l-4 border-zinc-300 pl-3 text-zinc-600 dark:border-zinc-600 dark:text-zinc-300">
          {blocks((t as Tokens.Blockquote).tokens, key)}
        </blockquote>
      );
    case "list": {
      const l = t as Tokens.List;
      const items = l.items.map((item, i) => (
        <li key={`${key}-${i}`}>
          {item.task && <input type="checkbox" checked={!!item.checked} readOnly disabled className="mr-1" />}
          {blocks(item.tokens, `${key}-${i}-`, !l.loose)}
        </li>
      ));
      return l.ordered ? (
        <ol key={key} start={typeof l.start === "number" ? l.start : undefined} className="list-decimal pl-6">{items}</ol>
      ) : (
        <ul key={key} className="list-disc pl-6">{items}</ul>
      );
    }
    case "table": {
      const tb = t as Tokens.Table;
      return (
        <div key={key} className="overflow-x-auto">
          <table className="border-collapse text-sm">
            <thead>
              <tr>{tb.header.map((c, i) => <th key={i} className="border border-zinc-300 px-2 py-1 dark:border-zinc-600">{inline(c.tokens, `${key}h${i}`)}</th>)}</tr>
            </thead>
            <tbody>
              {tb.rows.map((row, r) => (
                <tr key={r}>{row.map((c, i) => <td key={i} className="border border-zinc-300 px-2 py-1 dark:border-zinc-600">{inline(c.tokens, `${key}r${r}c${i}`)}</td>)}</tr>
              ))}
            </tbody>
          </table>
        </div>
      );
    }
    case "hr":
      return <hr key={key} className="border-zinc-300 dark:border-zinc-600" />;
    case "text": {
      const text = t as Tokens.Text;
      return <p key={key}>{text.tokens ? inline(text.tokens, key) : text.text}</p>;
    }
    default:
      return <p key={key}>{"text" in t && typeof t.text === "string" ? t.text : t.raw}</p>;
  }
}

function blocks(tokens: Token[], key = "", tight = false): ReactNode[] {
  return tokens.map((t, i) =>
    tight && t.type === "text" ? <span key={`${key}${i}`}>{inline((t as Tokens.Text).tokens ?? [t], `${key}${i}`)}</span> : block(t, `${key}${i}`),
  );
}

const Markdown = memo(function Markdown({ text }: { text: string }) {
  const tokens = useMemo(() => new Lexer({ gfm: true, breaks: false }).lex(text), [text]);
  return <div className="markdown space-y-3 leading-relaxed break-words">{blocks(tokens)}</div>;
});

export default Markdown;
